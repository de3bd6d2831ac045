"""What `controller version` reports: this controller and every component a run depends on, as installed."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version

from controller import __version__
from controller.errors import ControllerError
from controller.process import run
from controller.secrets.sops import sops_binary
from controller.vocabulary import Reason

PACKAGES = ("ansible-core", "ansible-runner", "mitogen")  # read from their metadata: none of them is imported


def versions() -> dict[str, str]:
    """Each component's version, or why there is none (``not installed``)."""
    found = {"controller": __version__, "python": f"{platform.python_version()} ({sys.executable})"}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    for tool, binary in (("sops", sops_binary()), ("age", "age"), ("git", "git")):  # the ones runs start
        if shutil.which(binary, path=env["PATH"]) is None:
            found[tool] = "not installed"
            continue
        try:
            said = run([binary, "--version"], reason=Reason.CONFIG_INVALID, what=f"{tool} --version", env=env,
                       timeout=10)
        except ControllerError as error:
            found[tool] = error.message
            continue
        first = said.strip().splitlines()[0] if said.strip() else ""
        found[tool] = first.removeprefix(f"{tool} version ").removeprefix(f"{tool} ")
    return found


def versions_text(found: dict[str, str]) -> str:
    """One line a component, names aligned."""
    width = max(len(name) for name in found)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in found.items())
