"""The applications a repository asks to reconcile, read from ``gitops.yml`` at the revision."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from controller.config import HostPort
from controller.errors import ControllerError
from controller.schema import Seconds, build, read_yaml
from controller.source.ansible_cfg import read_ansible_cfg
from controller.vocabulary import Approval, Heal, OnFailure, Policy, Reason

APPS_FILE = "gitops.yml"
SHARE = re.compile(r"\d+(?:\.\d+)?%")
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
        # redirects are followed, so the status checked is never a 3xx
        if self.status is not None and (self.http is None or not (200 <= self.status < 300
                                                                   or 400 <= self.status < 600)):
            return "status: only for an http check, an HTTP status such as 204 (200-299 or 400-599)"
        if not 0 <= self.retries <= 20 or not 0 < self.timeout <= 300 or self.delay > 300:
            return "retries must be 0 to 20, timeout more than 0 and at most 300s, delay at most 300s"
        return None


@dataclass(frozen=True)
class RolloutSteps:
    """How a sync applies an app (gitops.yml ``rollout:``): batch after batch of the hosts that need the apply, each
    healthy before the next starts; a batch that fails halts the rest (``on_failure: rollback`` also puts it back)."""

    batches: tuple[int | str, ...] = ("100%",)  # hosts per step: a count, or a share such as 25%; the last: the rest
    on_failure: OnFailure = OnFailure.HALT

    def split(self, hosts: Sequence[str]) -> list[list[str]]:
        """``hosts`` in batches, in order: each step's count (a share rounds up, at least one), the last the rest."""
        left, batches = list(hosts), []
        for i, step in enumerate(self.batches):
            if not left:
                break
            size = len(left) if i == len(self.batches) - 1 else \
                step if isinstance(step, int) else max(1, math.ceil(len(hosts) * float(step[:-1]) / 100))
            batches.append(left[:size])
            left = left[size:]
        return batches

    def problem(self) -> str | None:
        """What is wrong with the steps as written, if anything."""
        if not self.batches:
            return "batches: lists no step"
        for step in self.batches:
            if (isinstance(step, int) and step < 1) or (isinstance(step, str) and not (
                    SHARE.fullmatch(step) and 0 < float(step[:-1]) <= 100)):
                return f"batches: expected a number of hosts (1 or more) or a share such as 25%, got {step!r}"
        return None


@dataclass(frozen=True)
class Window:
    """A maintenance window (gitops.yml ``windows:``): from each start its cron expression gives, for ``duration``,
    applies are held (``deny``), or allowed (``allow``: outside every allow window of the app they are held). The
    cron expression is read in ``timezone`` (an IANA name), or in the bastion's own time zone."""

    deny: str | None = None
    allow: str | None = None
    duration: Seconds | None = None
    timezone: str | None = None

    @property
    def cron(self) -> str:
        return self.deny or self.allow or ""

    def __str__(self) -> str:
        """How output names it: ``"0 9 * * 1-5"``, with its time zone when it has one."""
        return f'"{self.cron}"' + (f" ({self.timezone})" if self.timezone else "")

    def problem(self) -> str | None:
        """What is wrong with the window as written, if anything."""
        if (self.deny is None) == (self.allow is None):
            return "needs exactly one of deny, allow (a cron expression: when the window starts)"
        try:
            CronSim(self.cron, datetime.now(UTC))
        except CronSimError as error:
            return f"{'deny' if self.deny is not None else 'allow'}: not a cron expression ({error}): {self.cron!r}"
        if self.duration is None or not 0 < self.duration <= 7 * 86400:
            return "duration: how long the window lasts from each start, such as 8h (more than 0, at most 7 days)"
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                return f"timezone: no time zone {self.timezone!r} (an IANA name such as Europe/Paris)"
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
    rollout: RolloutSteps | None = None  # None: every host that needs the apply at once
    depends_on: tuple[str, ...] = ()     # apps applied (converged and healthy at the same revision) before this one
    windows: tuple[Window, ...] = ()     # when a sync may apply it (none: at any time)
    heal: Heal = Heal.WHEN_OPEN          # whether drift at the applied revision is corrected while a window holds
    approval: Approval = Approval.NONE   # required: a new revision waits for `controller approve` before it is applied

    @property
    def needs_approval(self) -> bool:
        return self.approval is Approval.REQUIRED

    @property
    def heals_while_held(self) -> bool:
        """Drift at the revision a host runs is corrected even while a window holds applies (heal: always)."""
        return self.heal is Heal.ALWAYS


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
        if app.rollout is not None and (problem := app.rollout.problem()):
            raise _invalid(f"{key}.rollout", problem)
        for j, window in enumerate(app.windows):
            if problem := window.problem():
                raise _invalid(f"{key}.windows[{j}]", problem)
    names = {app.name for app in apps}
    for i, app in enumerate(apps):
        for j, upstream in enumerate(app.depends_on):
            if upstream not in names:
                raise _invalid(f"apps[{i}].depends_on[{j}]", f"no app {upstream!r} (apps: {', '.join(sorted(names))})")
    return in_order(apps)


def in_order(apps: tuple[App, ...]) -> tuple[App, ...]:
    """The apps with each one after those it depends on, otherwise as listed; a cycle is a ConfigInvalid error."""
    by_name = {app.name: app for app in apps}
    done: dict[str, App] = {}

    def visit(app: App, trail: tuple[str, ...]) -> None:
        if app.name in trail:
            cycle = " -> ".join((*trail[trail.index(app.name):], app.name))
            raise ControllerError(Reason.CONFIG_INVALID, f"{APPS_FILE}: depends_on cycle: {cycle}")
        if app.name not in done:
            for upstream in app.depends_on:
                visit(by_name[upstream], (*trail, app.name))
            done[app.name] = app

    for app in apps:
        visit(app, ())
    return tuple(done.values())


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
