"""The roles and collections a revision asks for, installed into its workspace before the syntax check.

``requirements.yml`` (``roles:`` and ``collections:``), ``roles/requirements.yml`` and
``collections/requirements.yml`` are read at the revision being reconciled and installed
with ``ansible-galaxy`` from the sources they name (Git, tarballs, a Galaxy server). The
result is cached under the state directory, keyed by the files' content, ansible-core's
version and the Galaxy server: a second run at the same requirements installs nothing and
reaches no network; it copies the cached tree into the workspace, so that no playbook can
change what the next run gets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from controller.ansible.job import Job
from controller.config import Config
from controller.errors import ControllerError
from controller.process import run
from controller.source.ansible_cfg import read_ansible_cfg
from controller.vocabulary import Reason

FILES = ("requirements.yml", "roles/requirements.yml", "collections/requirements.yml")
KINDS = ("roles", "collections")
KEEP = 5  # cached requirement sets kept (the most recently used ones)
# ansible-core's own defaults (lib/ansible/config/base.yml), searched after what the revision installs
DEFAULT_PATHS = {
    "roles": "~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles",
    "collections": "~/.ansible/collections:/usr/share/ansible/collections",
}
PATH_VARS = {"roles": "ANSIBLE_ROLES_PATH", "collections": "ANSIBLE_COLLECTIONS_PATH"}
# "[WARNING]: - motd was NOT installed successfully: - command ..." says the name we already say
_GALAXY_PREFIX = re.compile(r"^\[(ERROR|WARNING)\]:\s*(- \S+ was NOT installed successfully:\s*)?(- )?")
CFG_KEYS = {"roles": ("roles_path",), "collections": ("collections_path", "collections_paths")}
# what names the one that failed: "- motd was NOT installed successfully", "... of collection acme.base:"
_NAMED = re.compile(r"- (?P<name>\S+) was NOT installed successfully|of collection (?P<name2>[\w.]+?):")
_UNSATISFIED = re.compile(r"^\* (?P<name>[\w.]+):(?P<spec>\S+) \((?:dependency of (?P<parent>[\w.]+):"
                          r"(?P<version>\S+)|direct request)\)")


@dataclass(frozen=True)
class Requirement:
    """One entry of a requirements file: a role or a collection, as ansible-galaxy takes it."""

    kind: str        # roles | collections
    entry: Any       # the entry itself (a mapping, or a plain name)
    file: str        # the file that asks for it, relative to the repository

    @property
    def name(self) -> str:
        if isinstance(self.entry, dict):
            return str(self.entry.get("name") or self.entry.get("src") or "?")
        return str(self.entry)


def install_requirements(config: Config, project: Path, private: Path, job: Job,
                         step: Callable[[str], None]) -> Job:
    """Install what the revision at ``project`` requires into ``private``; the job, told where it is.

    A revision that requires nothing gets ``job`` back unchanged.
    """
    found = read_requirements(project)
    if not found:
        return job
    cache = config.state_path / "cache" / "requirements"
    entry = cache / cache_key(project, found, config.galaxy.server)
    if entry.is_dir():
        step(f"{len(found)} requirement(s): cached")
        os.utime(entry)  # most recently used: kept longest
    else:
        step(f"installing {len(found)} requirement(s) with ansible-galaxy")
        _install_into_cache(config, project, found, entry, job)
        _prune(cache)
    installed = private / "requirements"
    shutil.copytree(entry, installed, symlinks=True)
    return replace(job, env={**job.env, **search_paths(project, installed, job.env)})


def read_requirements(project: Path) -> list[Requirement]:
    """Every role and collection the revision's requirements files name, in file order."""
    found: list[Requirement] = []
    for name in FILES:
        path = project / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ControllerError(Reason.REQUIREMENTS_FAILED, f"{name}: not valid YAML ({exc})") from exc
        if data is None:
            continue
        if isinstance(data, list):  # the old format: a list of roles (or, in collections/, of collections)
            data = {"collections" if name.startswith("collections/") else "roles": data}
        if not isinstance(data, dict) or set(data) - set(KINDS):
            raise ControllerError(Reason.REQUIREMENTS_FAILED,
                                  f"{name}: expected a mapping with roles: and collections: lists")
        for kind in KINDS:
            entries = data.get(kind) or []
            if not isinstance(entries, list):
                raise ControllerError(Reason.REQUIREMENTS_FAILED, f"{name}: {kind}: expected a list")
            found.extend(Requirement(kind, entry, name) for entry in entries)
    return found


def cache_key(project: Path, found: list[Requirement], server: str | None) -> str:
    """What the installed set depends on: the files' content, the tarballs of the revision they name
    (a new build committed at the same path is a new set), ansible-core's version and the Galaxy server.

    A tarball outside the repository is a source like a URL: named, not read.
    """
    files = {name: (project / name).read_text() for name in FILES if (project / name).is_file()}
    tarballs = {}
    for requirement in found:
        for value in (requirement.entry.values() if isinstance(requirement.entry, dict) else [requirement.entry]):
            if not isinstance(value, str) or value.startswith("/") or "://" in value:
                continue
            local = project / value
            if value.endswith((".tar.gz", ".tgz")) and local.is_file():
                tarballs[value] = hashlib.sha256(local.read_bytes()).hexdigest()
    material = json.dumps([version("ansible-core"), server, files, tarballs], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def search_paths(project: Path, installed: Path, env: dict[str, str]) -> dict[str, str]:
    """Roles and collections search paths: what the revision installed first, then the repository's
    ``ansible.cfg`` paths (an environment variable would otherwise hide them), then the defaults."""
    cfg = read_ansible_cfg(project)
    paths = {}
    for kind, var in PATH_VARS.items():
        repo = next((value for key in CFG_KEYS[kind] if (value := cfg.get("defaults", key, fallback=None))), None)
        repo_paths = [str((project / p).resolve()) for p in repo.split(":") if p] if repo else []
        rest = env.get(var, DEFAULT_PATHS[kind])
        paths[var] = ":".join([str(installed / kind), *repo_paths, rest])
    return paths


def _install_into_cache(config: Config, project: Path, found: list[Requirement], entry: Path, job: Job) -> None:
    """One ``ansible-galaxy`` install per requirements file and kind, as it installs a file itself: the
    collections a file lists resolve their dependencies among themselves, vendored tarballs in any order."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    for directory in (entry.parent.parent, entry.parent):
        os.chmod(directory, 0o700)
    building = Path(tempfile.mkdtemp(prefix=".installing-", dir=entry.parent))
    try:
        scratch = Path(job.env["ANSIBLE_LOCAL_TEMP"])
        env = {**job.env, "ANSIBLE_GALAXY_CACHE_DIR": str(scratch / "galaxy-cache"),
               "ANSIBLE_GALAXY_DISPLAY_PROGRESS": "False",
               # where it installs to (or galaxy warns that nothing will find it), then what is there already
               **search_paths(project, building, job.env)}
        server = ["--server", config.galaxy.server] if config.galaxy.server else []
        for kind in KINDS:
            (building / kind).mkdir()
        for number, (name, kind) in enumerate((name, kind) for name in FILES for kind in KINDS):
            listed = [r for r in found if r.file == name and r.kind == kind]
            if not listed:
                continue
            requirements = scratch / f"requirements-{number}.yml"
            requirements.write_text(yaml.safe_dump({kind: [r.entry for r in listed]}))
            # tarballs and directories only: no Galaxy server to ask, and a missing dependency is named as such
            offline = ["--offline"] if kind == "collections" and all(_local(r.entry) for r in listed) else []
            run(["ansible-galaxy", kind.removesuffix("s"), "install", "-r", str(requirements),
                 "-p", str(building / kind), *(offline or server)], reason=Reason.REQUIREMENTS_FAILED, what=name,
                env=env, cwd=project, timeout=config.galaxy.timeout,
                explain=functools.partial(_galaxy_error, listed=listed, offline=bool(offline)))
        try:
            building.rename(entry)
        except OSError:  # another controller process cached the same set meanwhile
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _local(entry: Any) -> bool:
    """A collection ansible-galaxy installs from this machine (a tarball, a directory), asking no server."""
    if isinstance(entry, dict):
        source, kind = str(entry.get("name") or ""), entry.get("type")
        if kind in ("file", "dir", "subdirs"):
            return "://" not in source
        return kind is None and source.endswith((".tar.gz", ".tgz")) and "://" not in source
    return isinstance(entry, str) and entry.endswith((".tar.gz", ".tgz")) and "://" not in entry


def _galaxy_error(stderr: str, listed: list[Requirement], offline: bool) -> str:
    """Which role or collection could not be installed, who needs it, and ansible-galaxy's (or git's) reason."""
    raw = [line.strip() for line in stderr.splitlines() if line.strip() and "--ignore-errors" not in line]
    noun, file = listed[0].kind.removesuffix("s"), listed[0].file
    for line in raw:
        # the resolver: "* acme.base:>=1.0.0 (dependency of acme.app:1.0.0)", or "(direct request)"
        missing = _UNSATISFIED.match(line)
        if missing and missing["parent"]:
            where = "the listed tarballs and directories (offline)" if offline else "what the Galaxy server has"
            return (f"collection {missing['name']} {missing['spec']} could not be installed: "
                    f"{missing['parent']} {missing['version']} requires it, and neither {file} nor "
                    f"{where} provides it")
        if missing:
            return f"collection {missing['name']} {missing['spec']} could not be installed: no source provides it"
    named = next((m["name"] or m["name2"] for line in raw if (m := _NAMED.search(line))), None)
    if named is None and len(listed) == 1:
        named = listed[0].name
    return f"{f'{noun} {named}' if named else listed[0].kind} could not be installed: {_galaxy_reason(raw)}"


def _galaxy_reason(raw: list[str]) -> str:
    """The line of ansible-galaxy's output that says what went wrong: git's own words, else its error."""
    for marker in ("fatal: ", "error: "):  # galaxy wraps git's message into a warning line
        for line in raw:
            if marker in line:
                return line[line.index(marker):][:400]
    errors = [line for line in raw if line.startswith("[ERROR]")]
    return _GALAXY_PREFIX.sub("", next(iter([*errors, *raw]), ""))[:400]


def _prune(cache: Path) -> None:
    """Keep the most recently used requirement sets; a set no revision asks for any more goes."""
    sets = sorted((p for p in cache.iterdir() if not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in sets[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in cache.glob(".installing-*"):  # left by a killed controller
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
