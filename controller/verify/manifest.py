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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

from controller.ansible.results import Connection
from controller.ansible.targets import STATELESS_ACTIONS, short_action
from controller.config import Config
from controller.source.apps import App
from controller.verify.health import HostHealth

# What a manifest records and how; a manifest of another form (an older controller's) is one of other inputs.
FORM = 2

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
    """A digest of everything a manifest derives from: the revision, the app, its inventory and vars in
    ``project``, the bastion settings that reach a host (how Ansible runs, how ssh connects and checks
    keys, what is decrypted, where requirements come from), and the Ansible and controller versions.
    Notifications, the dashboard, the listener and the daemon's intervals reach no host: editing them
    keeps every host verified.

    The files are taken as committed, SOPS files still encrypted: a changed secret is a changed
    ciphertext, so nothing has to be decrypted to tell, and no hash of a plaintext is ever stored.
    """
    digest = hashlib.sha256()
    reaching = (config.ansible, config.ssh, config.known_hosts, config.sops, config.galaxy)
    for part in (revision, repr(app), repr(reaching), version("ansible-core"), version("gitops-controller"),
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


@dataclass(frozen=True)
class Verdict:
    """One host after a verify: ``verified``, or why it needs a full check."""

    host: str
    verified: bool
    why: str = ""
    manifest: Manifest | None = None
    health: HostHealth | None = None  # the app's health checks, run in the same look

    def to_json(self) -> dict[str, object]:
        found = self.manifest
        return {"host": self.host, "verified": self.verified, "why": self.why,
                "covered_tasks": found.covered if found else 0,
                "paths": len(found.entries) if found else 0,
                "resources": len(found.resources) if found else 0,
                "uncovered_tasks": list(found.uncovered) if found else [],
                "last_full_check": found.checked_at if found else None}
