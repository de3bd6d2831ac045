"""Host manifests: what a full check or apply left on a host, so that ``verify`` can look in one round trip.

A manifest lists, for every task whose result names what it manages, that thing as the host
had it right after a full run found the host in sync: a path (file, copy, template, lineinfile,
...: kind, mode, owner, group, SHA-1 or link target), or a resource (a package's version, a
service's state, a user's uid, home, shell and groups, a group's gid, a mount, a sysctl value, a
crontab). It is only as good as what it was derived from, so it carries a digest of those inputs;
a different digest means a full check.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeGuard

from controller.config import Config
from controller.source.apps import App

# What a manifest records and how; a manifest of another form (an older controller's) is one of other inputs.
FORM = 2
# Modules whose result names the path they manage; what they leave there is all they manage.
FILE_ACTIONS = frozenset({"file", "copy", "template", "lineinfile", "blockinfile", "ini_file", "replace",
                          "assemble", "xml", "patch"})
# Tasks that change nothing on the host: nothing to cover.
STATELESS_ACTIONS = frozenset({"debug", "set_fact", "assert", "fail", "meta", "setup", "gather_facts", "stat",
                               "include_tasks", "import_tasks", "include_role", "import_role", "include_vars",
                               "add_host", "group_by", "pause", "wait_for", "wait_for_connection", "ping",
                               "package_facts", "service_facts", "slurp", "fetch", "find", "getent",
                               "set_stats", "validate_argument_spec"})


class ResourceKind(StrEnum):
    """What a resource-type task manages, as verify's look reads it on the host."""

    PACKAGE = "package"    # installed version (dpkg's status file, or rpm)
    SERVICE = "service"    # running and enabled (systemd when it runs, else the SysV init script)
    USER = "user"          # uid, primary group, home, shell, supplementary groups
    GROUP = "group"        # gid
    MOUNT = "mount"        # what is mounted there (/proc/mounts) and its fstab line
    SYSCTL = "sysctl"      # the kernel's value (/proc/sys)
    CRONTAB = "crontab"    # a user's crontab, as a checksum


RESOURCE_ACTIONS = {
    **dict.fromkeys(("apt", "package", "dnf", "dnf5", "yum"), ResourceKind.PACKAGE),
    **dict.fromkeys(("service", "systemd", "systemd_service", "sysvinit"), ResourceKind.SERVICE),
    "user": ResourceKind.USER, "group": ResourceKind.GROUP, "mount": ResourceKind.MOUNT,
    "sysctl": ResourceKind.SYSCTL, "cron": ResourceKind.CRONTAB,
}
# a .deb named as Debian names them: package_version_architecture.deb
DEB_FILE = re.compile(r"^([a-z0-9][a-z0-9+.-]*)_[^_/]+_[^_/]+\.deb$")


def short_action(action: str) -> str:
    """``ansible.builtin.template`` -> ``template``; collection modules keep their last name too."""
    return action.rsplit(".", 1)[-1]


def targets_of(action: str, res: Mapping[str, Any]) -> tuple[str, ...]:
    """What a task's result (loop items included) says it manages: absolute paths, and resources as
    ``kind:name``; () for a task that names nothing verify can look at, or something it cannot name."""
    short = short_action(action)
    if short not in FILE_ACTIONS and short not in RESOURCE_ACTIONS:
        return ()
    found: list[str] = []
    for source in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
        invocation = source.get("invocation")
        args = invocation.get("module_args", {}) if isinstance(invocation, dict) else {}
        if not isinstance(args, dict):
            args = {}
        if short in FILE_ACTIONS:
            for value in (source.get("path"), source.get("dest"), args.get("path"), args.get("dest")):
                if _absolute(value):
                    found.append(value)
                    break
        elif args or source.get("name"):
            named = _resources(RESOURCE_ACTIONS[short], args, source)
            if named is None:
                return ()  # a task that manages something unnamed is only covered by a full check
            found.extend(named)
    return tuple(dict.fromkeys(found))


def _absolute(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith("/") and "\n" not in value


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value] if isinstance(value, list) else []


def _resources(kind: ResourceKind, args: Mapping[str, Any], res: Mapping[str, Any]) -> list[str] | None:
    """The ``kind:name`` targets (and paths) of one result of a resource module; None: it cannot be named."""
    if kind is ResourceKind.PACKAGE:
        names = []
        for name in _names(args.get("name")):
            # "nginx=1.24.0-1~bookworm", "nginx>=1.2": the package, whatever version the task pins
            plain = re.split(r"[=<>\s]", name, maxsplit=1)[0]
            if not plain or any(c in plain for c in "*?[/@") or "://" in name:
                return None
            names.append(plain)
        deb = args.get("deb")
        if isinstance(deb, str) and deb:
            match = DEB_FILE.match(posixpath.basename(deb))
            if match is None:
                return None
            names.append(match.group(1))
        return [f"{kind}:{n}" for n in names] or None
    if kind is ResourceKind.MOUNT:
        where = args.get("path") or args.get("name")
        return [f"{kind}:{where}"] if _absolute(where) else None
    if kind is ResourceKind.CRONTAB:
        cron_file = args.get("cron_file")
        if isinstance(cron_file, str) and cron_file:
            return [cron_file if cron_file.startswith("/") else f"/etc/cron.d/{cron_file}"]
        return [f"{kind}:{args.get('user') or ''}"]  # '': the user the module ran as
    called = args.get("name") or res.get("name")
    if not isinstance(called, str) or not called or "\n" in called:
        return None
    found = [f"{kind}:{called}"]
    if kind is ResourceKind.SYSCTL and _absolute(args.get("sysctl_file")):
        found.append(args["sysctl_file"])
    return found


@dataclass(frozen=True)
class Connection:
    """How Ansible reached a host (after templating), so that verify reaches it the same way."""

    address: str
    port: int | None = None
    user: str | None = None
    private_key_file: str | None = None
    ssh_args: tuple[str, ...] = ()     # ansible.cfg's ssh_args (the job's), split as Ansible splits them
    common_args: tuple[str, ...] = ()  # ssh_common_args then ssh_extra_args: a jump host, a proxy...
    become: bool = False
    become_user: str | None = None
    become_method: str | None = None
    python: str | None = None          # ansible_python_interpreter, unless discovered

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Connection:
        """A connection as stored or as Ansible told it (fields an older manifest lacks keep their defaults)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "ssh_args": tuple(known.get("ssh_args", ())),
                      "common_args": tuple(known.get("common_args", ()))})


@dataclass(frozen=True)
class Entry:
    """One path as a host has it: ``kind`` is file, directory, link, absent, other or error."""

    path: str
    kind: str
    mode: str = ""
    owner: str = ""
    group: str = ""
    sha1: str = ""
    target: str = ""          # a link's target

    def differences(self, now: Entry) -> list[str]:
        """What changed from this (the recorded state) to ``now``, in words."""
        if now.kind != self.kind:
            return [f"{self.path}: was a {self.kind}, now {'gone' if now.kind == 'absent' else 'a ' + now.kind}"]
        said = []
        for name in ("sha1", "mode", "owner", "group", "target"):
            before, after = getattr(self, name), getattr(now, name)
            if before != after:
                said.append(f"{self.path}: {'content' if name == 'sha1' else name} "
                            f"{'changed' if name == 'sha1' else f'{before} -> {after}'}")
        return said


@dataclass(frozen=True)
class Resource:
    """One resource as a host has it: ``state`` holds what the look reads (() when there is none)."""

    kind: str
    name: str
    state: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def differences(self, now: Resource) -> list[str]:
        """What changed from this (the recorded state) to ``now``, in words."""
        if now.state == self.state:
            return []
        what = f"{self.kind} {self.name or '(of the user verify logs in as)'}"
        if not now.state:
            return [f"{what}: was there, now absent"]
        if not self.state:
            return [f"{what}: was absent, now there"]
        before, after = dict(self.state), dict(now.state)
        return [f"{what}: {key} {before.get(key) or '(none)'} -> {after.get(key) or '(none)'}"
                for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


@dataclass(frozen=True)
class Manifest:
    """A host's manifest: the paths and resources its covered tasks left, and what a verify cannot see."""

    host: str
    digest: str
    revision: str
    checked_at: str                        # when the full run that found the host in sync ended
    connection: Connection
    entries: tuple[Entry, ...]
    covered: int                           # tasks whose every effect is in ``entries`` and ``resources``
    uncovered: tuple[str, ...] = ()        # tasks (a command, an unnamed package...) only a full check sees
    unverified: int = 0                    # tasks the full check itself could not verify
    resources: tuple[Resource, ...] = ()
    error: str = ""                        # the look after that full run failed: nothing to compare with

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries)

    @property
    def targets(self) -> tuple[str, ...]:
        """Everything the look asks the host about: the paths, then the resources."""
        return (*self.paths, *(r.key for r in self.resources))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**{**data, "connection": Connection.from_dict(data["connection"]),
                      "entries": tuple(Entry(**e) for e in data["entries"]),
                      "uncovered": tuple(data["uncovered"]),
                      "resources": tuple(Resource(r["kind"], r["name"], tuple(tuple(p) for p in r["state"]))
                                         for r in data.get("resources", ()))})


def ordered(targets: Iterable[str]) -> tuple[str, ...]:
    """Targets as a manifest holds them and the look asks for them: the paths, then the resources."""
    targets = list(targets)
    return (*(t for t in targets if t.startswith("/")), *(t for t in targets if not t.startswith("/")))


@dataclass
class Coverage:
    """What one full run's task results say about one host, before anything is looked at."""

    targets: list[str] = field(default_factory=list)
    covered: int = 0
    uncovered: list[str] = field(default_factory=list)

    def add(self, task: str, action: str, targets: Iterable[str]) -> None:
        targets = list(targets)
        if targets:
            self.covered += 1
            self.targets.extend(t for t in targets if t not in self.targets)
        elif short_action(action) not in STATELESS_ACTIONS and task not in self.uncovered:
            self.uncovered.append(task)


def inputs_digest(config: Config, revision: str, app: App, project: Path) -> str:
    """A digest of everything a manifest derives from: the revision, the bastion config, the app's
    inventory and vars in ``project``, and the Ansible and controller versions.

    The files are taken as committed, SOPS files still encrypted: a changed secret is a changed
    ciphertext, so nothing has to be decrypted to tell, and no hash of a plaintext is ever stored.
    """
    digest = hashlib.sha256()
    for part in (revision, repr(app), repr(config), version("ansible-core"), version("gitops-controller"),
                 str(FORM)):
        digest.update(part.encode() + b"\0")
    inventory = project / app.inventory
    beside = [inventory] if inventory.is_dir() else [inventory, inventory.parent / "group_vars",
                                                     inventory.parent / "host_vars"]
    playbook_dir = (project / app.playbook).parent
    for root in (*beside, playbook_dir / "group_vars", playbook_dir / "host_vars"):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.is_file():
                digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
