"""The values that go into and come out of a reconcile: the request, each app's result, the progress sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.ansible.results import TaskResult
from controller.run.plan import Plan
from controller.run.planfile import PlanFile
from controller.source.revision import Revision
from controller.verify.drift import Report
from controller.verify.health import HostHealth
from controller.verify.manifest import Verdict
from controller.vocabulary import ExitCode, Health, Kind, Mode, OnFailure, Outcome, Policy, Reason, Trigger


@dataclass(frozen=True)
class Actor:
    """The person who asked for a run, and why: the audit trail records it for what they did on purpose."""

    who: str
    reason: str = ""


@dataclass(frozen=True)
class Request:
    """What to reconcile: ``check`` never applies; ``sync`` applies under policy ``apply``."""

    mode: Mode
    app: str | None = None
    revision: str | None = None
    dry_run: bool = False
    allow_rewrite: bool = False
    trigger: Trigger = Trigger.MANUAL
    fetch: bool = True               # False: use the branch head as last fetched (scheduled drift checks)
    only_if_changed: bool = False    # return at once when nothing moved and no drift check is due
    force: bool = False              # apply to every host, whatever the check found
    accept_unverified: bool = False  # exit 0 for unverified
    verify_first: bool = False       # verify hosts against their manifests; full check only where needed
    apply_detect: bool = False       # sync --apply: apply the app even though its policy is detect
    plan: PlanFile | None = None     # sync --plan: apply only that revision, only where the check matches it
    override_window: bool = False    # sync --override-window: apply even inside a window that holds applies
    limit: str | None = None         # --limit: only these hosts (Ansible's pattern), within the app's own limit
    rollback: bool = False           # apply ``revision`` (default: the one before) to ``app`` at once, and pin it
    by: Actor | None = None          # who asked (a person at the CLI or the dashboard), for the audit trail

    def kind(self, revision: str | None = None, head: str | None = None) -> Kind:
        """A preview when it is a dry run or not of the branch head; otherwise what the command says."""
        if self.dry_run or (self.revision is not None and not self.rollback
                            and (revision is None or revision != head)):
            return Kind.PREVIEW
        return Kind(self.mode)

    @property
    def verifying(self) -> bool:
        """Hosts are compared with their manifests before any full check (verify, sync --verify-first)."""
        return self.mode is Mode.VERIFY or self.verify_first


@dataclass(frozen=True)
class Gates:
    """What would gate the apply of a previewed revision: its batches over the hosts it would apply to, the
    health checks each batch must pass, and what a failed batch does (None: no rollout in batches)."""

    batches: tuple[tuple[str, ...], ...]
    checks: tuple[str, ...]
    on_failure: OnFailure | None


@dataclass(frozen=True)
class AppResult:
    """How one app's run ended, with the reports it produced."""

    app: str
    policy: Policy | None            # None: gitops.yml was not read (the run failed before it)
    run_id: int | None               # None: nothing was run (suspended, unknown app)
    outcome: Outcome
    reason: Reason | None
    message: str
    check: Report | None = None
    applied: Report | None = None    # None: no apply ran
    previous: str | None = None      # the revision applied before this run
    revision: str | None = None
    seconds: float = 0.0
    kind: Kind = Kind.CHECK
    plan: Plan | None = None         # where the apply ran and why
    behind: int = 0                  # hosts not at this revision after the run
    verdicts: tuple[Verdict, ...] = ()  # verify: each host's verdict against its manifest
    changed: tuple[str, ...] = ()    # the files the revision changes since ``previous`` (a preview names them)
    health: tuple[HostHealth, ...] = ()  # each host's, after the run (gitops.yml ``health:``)
    degraded: tuple[str, ...] = ()   # hosts whose health went bad with this run
    recovered: tuple[str, ...] = ()  # hosts healthy again with this run
    gates: Gates | None = None       # a preview: what would gate its apply (gitops.yml rollout:, health:)
    halted: str | None = None        # the branch head whose rollout halted, when this run halted or holds it
    held_until: str | None = None    # when the maintenance window that held this run's apply ends (UTC, ISO)

    @property
    def unhealthy(self) -> list[HostHealth]:
        return [h for h in self.health if h.health is Health.UNHEALTHY]

    def exit_code(self, accept_unverified: bool = False) -> ExitCode:
        if self.reason is Reason.LOCK_BUSY:
            return ExitCode.LOCKED
        code = self.outcome.exit_code(accept_unverified)
        return ExitCode.UNHEALTHY if code in (ExitCode.OK, ExitCode.UNVERIFIED) and self.unhealthy else code


@dataclass(frozen=True)
class Result:
    """The whole reconcile: the revision and every app's result."""

    request: Request
    revision: Revision | None
    apps: tuple[AppResult, ...]
    idle: str | None = None          # why nothing ran (--only-if-changed)
    kind: Kind = Kind.CHECK
    held_until: str | None = None    # idle: when the first maintenance window holding an app's apply ends

    @property
    def exit_code(self) -> ExitCode:
        codes = {a.exit_code(self.request.accept_unverified) for a in self.apps}
        for code in (ExitCode.LOCKED, ExitCode.ERROR, ExitCode.DRIFT, ExitCode.HELD, ExitCode.UNHEALTHY,
                     ExitCode.UNVERIFIED):
            if code in codes:
                return code
        return ExitCode.OK


class Progress(Protocol):
    """Where live progress goes (the terminal, a log, nowhere)."""

    def step(self, message: str) -> None: ...

    def started(self, app: str, phase: str, task: str, host: str) -> None: ...

    def task(self, app: str, phase: str, result: TaskResult) -> None: ...

    def notice(self, message: str) -> None: ...
