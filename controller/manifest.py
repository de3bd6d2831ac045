"""Host manifests: what a full check or apply left on a host, so that ``verify`` can look in one round trip.

A manifest lists, for every task whose result names a path (file, copy, template,
lineinfile, ...), that path as the host had it right after a full run found the host in
sync: kind, mode, owner, group, SHA-1 or link target. It is only as good as what it was
derived from, so it carries a digest of those inputs; a different digest means a full check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from controller.apps import App
from controller.config import Config

# Modules whose result names the path they manage; what they leave there is all they manage.
FILE_ACTIONS = frozenset({"file", "copy", "template", "lineinfile", "blockinfile", "ini_file", "replace",
                          "assemble", "xml", "patch"})
# Tasks that change nothing on the host: nothing to cover.
STATELESS_ACTIONS = frozenset({"debug", "set_fact", "assert", "fail", "meta", "setup", "gather_facts", "stat",
                               "include_tasks", "import_tasks", "include_role", "import_role", "include_vars",
                               "add_host", "group_by", "pause", "wait_for", "wait_for_connection", "ping",
                               "package_facts", "service_facts", "slurp", "fetch", "find", "getent",
                               "set_stats", "validate_argument_spec"})


def short_action(action: str) -> str:
    """``ansible.builtin.template`` -> ``template``; collection modules keep their last name too."""
    return action.rsplit(".", 1)[-1]


def paths_of(action: str, res: Mapping[str, Any]) -> tuple[str, ...]:
    """The absolute paths a file-type task's result names (loop items included); () for other tasks."""
    if short_action(action) not in FILE_ACTIONS:
        return ()
    found: list[str] = []
    for source in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
        args = source.get("invocation", {}).get("module_args", {}) if isinstance(source.get("invocation"), dict) \
            else {}
        for value in (source.get("path"), source.get("dest"), args.get("path"), args.get("dest")):
            if isinstance(value, str) and value.startswith("/") and "\n" not in value and value not in found:
                found.append(value)
                break
    return tuple(found)


@dataclass(frozen=True)
class Connection:
    """How Ansible reached a host (after templating), so that verify reaches it the same way."""

    address: str
    port: int | None = None
    user: str | None = None


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
class Manifest:
    """A host's manifest: the paths its covered tasks left, and what a verify cannot see."""

    host: str
    digest: str
    revision: str
    checked_at: str                        # when the full run that found the host in sync ended
    connection: Connection
    entries: tuple[Entry, ...]
    covered: int                           # tasks whose every effect is in ``entries``
    uncovered: tuple[str, ...] = ()        # tasks (package, service, command...) only a full check sees
    unverified: int = 0                    # tasks the full check itself could not verify

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.entries)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(**{**data, "connection": Connection(**data["connection"]),
                      "entries": tuple(Entry(**e) for e in data["entries"]),
                      "uncovered": tuple(data["uncovered"])})


@dataclass
class Coverage:
    """What one full run's task results say about one host, before the paths are looked at."""

    paths: list[str] = field(default_factory=list)
    covered: int = 0
    uncovered: list[str] = field(default_factory=list)

    def add(self, task: str, action: str, paths: Iterable[str]) -> None:
        paths = list(paths)
        if paths:
            self.covered += 1
            self.paths.extend(p for p in paths if p not in self.paths)
        elif short_action(action) not in STATELESS_ACTIONS and task not in self.uncovered:
            self.uncovered.append(task)


def inputs_digest(config: Config, revision: str, app: App, project: Path) -> str:
    """A digest of everything a manifest derives from: the revision, the bastion config, the app's
    inventory and vars in ``project``, and the Ansible and controller versions.

    The files are taken as committed, SOPS files still encrypted: a changed secret is a changed
    ciphertext, so nothing has to be decrypted to tell, and no hash of a plaintext is ever stored.
    """
    digest = hashlib.sha256()
    for part in (revision, repr(app), repr(config), version("ansible-core"), version("gitops-controller")):
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
