"""The applications a repository asks to reconcile, read from ``gitops.yml`` at the revision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ControllerError
from controller.schema import build, read_yaml
from controller.source.ansible_cfg import read_ansible_cfg
from controller.vocabulary import Policy, Reason

APPS_FILE = "gitops.yml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_PLAYBOOKS = ("site.yml", "playbooks/site.yml")
DEFAULT_INVENTORIES = ("inventory", "inventory.yml", "hosts", "hosts.yml")


@dataclass(frozen=True)
class App:
    """One playbook applied to one inventory, with a policy."""

    name: str
    playbook: str
    inventory: str
    limit: str | None = None
    policy: Policy = Policy.APPLY


@dataclass(frozen=True)
class AppsFile:
    apps: tuple[App, ...]


def load_apps(project: Path) -> tuple[App, ...]:
    """The apps of the repository checked out at ``project``; a default app when there is no gitops.yml."""
    path = project / APPS_FILE
    if not path.exists():
        return (default_app(project),)
    shown = Path(APPS_FILE)  # the repository's file, not its place in the workspace
    apps = build(AppsFile, read_yaml(path, "list of apps", shown), file=shown).apps
    if not apps:
        raise _invalid("apps", "lists no app")
    seen: set[str] = set()
    for i, app in enumerate(apps):
        key = f"apps[{i}]"
        if not NAME.match(app.name):
            raise _invalid(f"{key}.name", f"{app.name!r} is not a valid name (letters, digits, . _ -)")
        if app.name in seen:
            raise _invalid(f"{key}.name", f"{app.name!r} is listed twice")
        seen.add(app.name)
        for field in ("playbook", "inventory"):
            _check_inside(project, getattr(app, field), f"{key}.{field}")
    return apps


def default_app(project: Path) -> App:
    """``site``: site.yml or playbooks/site.yml on the inventory ansible.cfg names (or ./inventory, ./hosts)."""
    playbook = next((p for p in DEFAULT_PLAYBOOKS if (project / p).is_file()), None)
    inventory = _cfg_inventory(project) or next(
        (i for i in DEFAULT_INVENTORIES if (project / i).exists()), None)
    if playbook is None or inventory is None:
        missing = "a site.yml playbook" if playbook is None else "an inventory"
        raise ControllerError(Reason.CONFIG_INVALID,
                              f"{APPS_FILE}: not in the repository, and the default app needs {missing}; "
                              f"add {APPS_FILE} listing your apps")
    return App(name="site", playbook=playbook, inventory=inventory)


def _cfg_inventory(project: Path) -> str | None:
    value = read_ansible_cfg(project).get("defaults", "inventory", fallback=None)
    if value and "," not in value and (project / value).exists():
        return value
    return None


def _check_inside(project: Path, relative: str, key: str) -> None:
    target = (project / relative).resolve()
    if not target.is_relative_to(project.resolve()):
        raise _invalid(key, f"{relative!r} points outside the repository")
    if not target.exists():
        raise _invalid(key, f"{relative!r} does not exist at this revision")


def _invalid(key: str, message: str) -> ControllerError:
    return ControllerError(Reason.CONFIG_INVALID, f"{APPS_FILE}: {key}: {message}")
