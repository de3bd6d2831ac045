"""Change impact: which apps a commit can affect, read from the files it changes and what each app uses.

An app uses its inventory (hosts, group_vars, host_vars, secrets), its playbook with every playbook and
task file it imports, and the roles those name, with their dependencies. A changed file inside another
app's inventory, inside a role only other apps use, or in a playbook only other apps import cannot change
what the app does to its hosts. Anything the analysis cannot follow (a templated role or file name, a
playbook it cannot parse) and every other file (``ansible.cfg``, ``gitops.yml``, requirements, plugins,
collections) reaches every app.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from controller.source.ansible_cfg import read_ansible_cfg
from controller.source.apps import App

TASK_LISTS = ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always")
ROLE_ACTIONS = {f"{prefix}{action}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
                for action in ("include_role", "import_role")}
FILE_ACTIONS = {f"{prefix}{action}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
                for action in ("include_tasks", "import_tasks", "include", "import_playbook")}
ROLE_FILES = ("tasks", "handlers", "meta")  # the role files that can name other roles or task files


class _Unknown(Exception):
    """Something the analysis cannot follow: every change may reach the app."""


@dataclass(frozen=True)
class Uses:
    """What one app reads from the repository besides its inventory (project-relative paths)."""

    files: frozenset[PurePosixPath]  # playbooks and task files
    roles: frozenset[PurePosixPath]  # role directories


class Impact:
    """What each app of a checkout uses, read once, to tell which apps a commit can affect."""

    def __init__(self, every: Iterable[App], project: Path) -> None:
        self.apps = tuple(every)
        configured = _roles_path(project)
        roots = {root for a in self.apps for root in _search(a, configured)}
        # every role the repository holds where some app's playbook could find it
        self.roles = {root / d.name for root in roots if (project / root).is_dir()
                      for d in (project / root).iterdir() if _is_role(d)}
        try:
            self.uses: dict[str, Uses] = {a.name: _uses(a, project, _search(a, configured)) for a in self.apps}
        except _Unknown:
            self.uses = {}

    def reaches(self, app: App, changed: Iterable[str]) -> bool:
        """Whether a commit that changes ``changed`` can change what ``app`` does to its hosts."""
        own = PurePosixPath(app.inventory)
        foreign = [inventory for inventory in {PurePosixPath(a.inventory) for a in self.apps}
                   if not (inventory.is_relative_to(own) or own.is_relative_to(inventory))]
        mine = self.uses.get(app.name)
        others = [u for name, u in self.uses.items() if name != app.name]
        for path in map(PurePosixPath, changed):
            if any(path.is_relative_to(inventory) for inventory in foreign):
                continue
            if mine is None or path in mine.files:
                return True
            role = next((r for r in self.roles if path.is_relative_to(r)), None)
            if role is not None:
                if role in mine.roles:
                    return True
                continue  # a role this app does not use
            if not any(path in u.files for u in others):
                return True
        return False


def _roles_path(project: Path) -> tuple[PurePosixPath, ...]:
    """ansible.cfg's roles_path entries inside the repository, in order."""
    configured = read_ansible_cfg(project).get("defaults", "roles_path", fallback="") or ""
    entries = (PurePosixPath(os.path.normpath(p)) for p in configured.split(os.pathsep)
               if p and not os.path.isabs(p) and not p.startswith("~"))
    return tuple(e for e in entries if not str(e).startswith(".."))


def _search(app: App, configured: tuple[PurePosixPath, ...]) -> tuple[PurePosixPath, ...]:
    """Where Ansible looks for a role of ``app``'s playbook, in its order: ``roles/`` beside the playbook,
    roles_path, the playbook's own directory."""
    beside = PurePosixPath(app.playbook).parent
    return tuple({root: None for root in (beside / "roles", *configured, beside)})


def _uses(app: App, project: Path, roots: tuple[PurePosixPath, ...]) -> Uses:
    files: set[PurePosixPath] = set()
    roles: set[PurePosixPath] = set()
    beside = PurePosixPath(app.playbook).parent
    pending = [PurePosixPath(app.playbook)]
    while pending:
        path = pending.pop()
        if path in files:
            continue
        files.add(path)
        for kind, name in _references(_load(project, path)):
            if kind == "file":
                pending.append(_inside(path.parent, name))
            else:
                pending.extend(_role_files(_role_dir(name, beside, project, roots), project, roles))
    return Uses(frozenset(files), frozenset(roles))


def _role_files(role: PurePosixPath | None, project: Path, seen: set[PurePosixPath]) -> Iterator[PurePosixPath]:
    """The YAML files of a role not seen yet that can name further roles or task files (a role outside the
    repository, from a collection or the bastion, brings none)."""
    if role is None or role in seen:
        return
    seen.add(role)
    for part in ROLE_FILES:
        directory = project / role / part
        if directory.is_dir():
            for file in sorted(directory.rglob("*.y*ml")):
                yield PurePosixPath(file.relative_to(project).as_posix())


def _role_dir(name: str, beside: PurePosixPath, project: Path,
              roots: tuple[PurePosixPath, ...]) -> PurePosixPath | None:
    """The role directory ``name`` resolves to, as Ansible searches ``roots`` (a role named by its path: from
    the playbook's directory); None for a role from outside the repository (a collection's, the bastion's)."""
    if "/" in name:
        role = _inside(beside, name)
        if not (project / role).is_dir():
            raise _Unknown(name)
        return role
    for root in roots:
        if _is_role(project / root / name):
            return root / name
    return None


def _is_role(directory: Path) -> bool:
    return (directory / "tasks").is_dir() or (directory / "meta").is_dir()


def _inside(directory: PurePosixPath, name: str) -> PurePosixPath:
    normal = PurePosixPath(os.path.normpath(directory / name))
    if "{{" in name or name.startswith("/") or str(normal).startswith(".."):
        raise _Unknown(name)
    return normal


def _load(project: Path, path: PurePosixPath) -> Any:
    try:
        return yaml.safe_load((project / path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise _Unknown(str(path)) from None


def _references(node: Any) -> Iterator[tuple[str, str]]:
    """``("role", NAME)`` and ``("file", PATH)`` for each role and file a playbook, task file or role meta names."""
    if isinstance(node, list):
        for item in node:
            yield from _references(item)
        return
    if not isinstance(node, dict):
        return
    # a play's roles, a role's dependencies (meta/main.yml)
    for entry in (*(node.get("roles") or ()), *(node.get("dependencies") or ())):
        yield "role", _name(entry.get("role") or entry.get("name") if isinstance(entry, dict) else entry)
    for action, value in node.items():
        if action in ROLE_ACTIONS:
            yield "role", _name(value.get("name") if isinstance(value, dict) else value)
        elif action in FILE_ACTIONS:
            yield "file", _name(value.get("file") if isinstance(value, dict) else value)
        elif action in TASK_LISTS:
            yield from _references(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or "{{" in value:
        raise _Unknown(repr(value))
    return value
