"""The applications a repository asks to reconcile, read from ``gitops.yml`` at the revision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from controller.config import HostPort
from controller.errors import ControllerError
from controller.schema import Seconds, build, read_yaml
from controller.source.ansible_cfg import read_ansible_cfg
from controller.vocabulary import Policy, Reason

APPS_FILE = "gitops.yml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_PLAYBOOKS = ("site.yml", "playbooks/site.yml")
DEFAULT_INVENTORIES = ("inventory", "inventory.yml", "hosts", "hosts.yml")


@dataclass(frozen=True)
class HealthCheck:
    """One check run on every host of an app after it is applied and at each verify (gitops.yml ``health:``):
    exactly one of a ``command`` (exit 0), an ``http`` URL fetched on the host (2xx, or ``status``) and a ``tcp``
    port that accepts a connection (on the address Ansible reaches the host at, or ``HOST:PORT``)."""

    command: str | None = None
    http: str | None = None
    tcp: int | str | None = None
    status: int | None = None        # http: the one status that is healthy (2xx otherwise)
    timeout: Seconds = Seconds(5)    # for each attempt
    retries: int = 2                 # attempts after a first that failed
    delay: Seconds = Seconds(2)      # between two attempts

    def __str__(self) -> str:
        """How output names it: ``command "systemctl is-active nginx"``, ``http http://...``, ``tcp 8443``."""
        if self.command is not None:
            return f'command "{self.command}"'
        return f"http {self.http}" if self.http is not None else f"tcp {self.tcp}"

    def argument(self, address: str) -> str:
        """The check as the host's probe program takes it (``verify.probe``); a bare port is on ``address``."""
        if self.command is not None:
            kind, what = "command", self.command
        elif self.http is not None:
            kind, what = "http", self.http
        else:
            kind, what = "tcp", f"{address}:{self.tcp}" if isinstance(self.tcp, int) else str(self.tcp)
        fields = (kind, f"{self.timeout:g}", str(self.retries), f"{self.delay:g}", str(self.status or ""), what)
        return "\t".join(fields)

    def problem(self) -> str | None:
        """What is wrong with the check as written, if anything."""
        given = [name for name in ("command", "http", "tcp") if getattr(self, name) is not None]
        if len(given) != 1:
            return f"needs exactly one of command, http, tcp (got {', '.join(given) or 'none'})"
        if self.command is not None and not self.command.strip():
            return "command: is empty"
        if self.http is not None and (urlsplit(self.http).scheme not in ("http", "https")
                                      or not urlsplit(self.http).netloc):
            return f"http: expected an http:// or https:// URL, got {self.http!r}"
        if isinstance(self.tcp, int) and not 0 < self.tcp < 65536:
            return f"tcp: expected a port (1-65535) or HOST:PORT, got {self.tcp}"
        if isinstance(self.tcp, str):
            try:
                if not HostPort.parse(self.tcp).port:
                    raise ValueError
            except ValueError:
                return f"tcp: expected a port (1-65535) or HOST:PORT, got {self.tcp!r}"
        if self.status is not None and (self.http is None or not 100 <= self.status < 600):
            return "status: only for an http check, an HTTP status such as 204"
        if self.retries < 0 or self.timeout <= 0:
            return "retries must not be negative, and timeout must be more than 0"
        return None


@dataclass(frozen=True)
class App:
    """One playbook applied to one inventory, with a policy and the health checks of its hosts."""

    name: str
    playbook: str
    inventory: str
    limit: str | None = None
    policy: Policy = Policy.APPLY
    health: tuple[HealthCheck, ...] = ()


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
        for j, check in enumerate(app.health):
            if problem := check.problem():
                raise _invalid(f"{key}.health[{j}]", problem)
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
