"""The pipeline: fetch -> snapshot -> decrypt -> gate -> check -> report -> apply -> record."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from controller.ansible_config import Job, job_settings
from controller.apps import App, load_apps
from controller.config import Config
from controller.drift import Report, decide, report
from controller.errors import ControllerError
from controller.interrupt import Cancel
from controller.outcomes import ExitCode, Outcome, Reason, failure
from controller.redact import Redactor
from controller.runner import TaskResult, run_playbook, syntax_check
from controller.schedule import DriftSchedule, parse_time
from controller.secrets import decrypt_in_place, find_encrypted
from controller.signatures import refused_head, verify_revision
from controller.source import Revision, Source
from controller.state import Store
from controller.workspace import Workspace, workspace

# outcomes a sync can be left in until Git or the schedule says otherwise (drifted: policy detect)
SETTLED = (Outcome.IN_SYNC, Outcome.CONVERGED, Outcome.DRIFTED)


@dataclass(frozen=True)
class Request:
    """What to reconcile: ``check`` never applies; ``sync`` applies under policy ``apply``."""

    mode: str
    app: str | None = None
    revision: str | None = None
    dry_run: bool = False
    allow_rewrite: bool = False
    trigger: str = "manual"
    fetch: bool = True               # False: use the branch head as last fetched (scheduled drift checks)
    only_if_changed: bool = False    # return at once when nothing moved and no drift check is due

    @property
    def applies(self) -> bool:
        return self.mode == "sync" and not self.dry_run


@dataclass(frozen=True)
class AppResult:
    """How one app's run ended, with the reports it produced."""

    app: str
    policy: str
    run_id: int | None               # None: nothing was run (suspended)
    outcome: Outcome
    reason: Reason | None
    message: str
    check: Report | None = None
    applied: Report | None = None
    previous: str | None = None      # the revision applied before this run
    revision: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        if self.outcome in (Outcome.FAILED, Outcome.INTERRUPTED):
            return ExitCode.LOCKED if self.reason is Reason.LOCK_BUSY else ExitCode.ERROR
        return ExitCode.DRIFT if self.outcome in (Outcome.DRIFTED, Outcome.PARTIAL) else ExitCode.OK


@dataclass(frozen=True)
class Result:
    """The whole reconcile: the revision and every app's result."""

    request: Request
    revision: Revision | None
    apps: tuple[AppResult, ...]
    idle: str | None = None          # why nothing ran (--only-if-changed)

    @property
    def exit_code(self) -> ExitCode:
        codes = {a.exit_code for a in self.apps}
        for code in (ExitCode.LOCKED, ExitCode.ERROR, ExitCode.DRIFT):
            if code in codes:
                return code
        return ExitCode.OK


class Progress(Protocol):
    """Where live progress goes (the terminal, a log, nowhere)."""

    def step(self, message: str) -> None: ...

    def task(self, app: str, phase: str, result: TaskResult) -> None: ...

    def notice(self, message: str) -> None: ...


def source_of(config: Config) -> Source:
    """The configured Git source with its cache under the state directory."""
    return Source(config.source.url, config.source.branch, config.state_path / "cache" / "source.git",
                  timeout=config.source.fetch_timeout)


def reconcile(config: Config, request: Request, store: Store, progress: Progress, cancel: Cancel) -> Result:
    """Run the pipeline once; every outcome, failures included, is recorded in ``store``."""
    revision: Revision | None = None
    apps: tuple[App, ...] = ()
    try:
        source = source_of(config)
        if request.fetch:
            progress.step(f"fetching {config.source.branch} from {source.url.shown}")
        head = source.fetch() if request.fetch else source.head()
        revision = source.resolve(request.revision) if request.revision else head
        if request.only_if_changed and (idle := _idle(config, store, revision)):
            return Result(request, revision, (), idle)
        store.record_revision(revision)
        verify_revision(config, store, revision, request.app, progress.step)  # before anything is extracted
        with workspace(Path(config.workspace_dir)) as space:
            progress.step(f"revision {revision.short} {revision.subject!r}")
            source.extract(revision.sha, space.project)
            apps = _select(load_apps(space.project), request.app)
            encrypted = find_encrypted(space.project)
            progress.step(f"decrypting {len(encrypted)} SOPS file(s) into {space.root}")
            redactor = decrypt_in_place(space.project, encrypted, config.sops.age_key_file)
            job = job_settings(config, space.project, space.job)
            for notice in job.notices:
                progress.notice(notice)
            for app in apps:
                progress.step(f"syntax check of {app.name}: {app.playbook}")
                syntax_check(app, space.project, job, redactor)
            results = []
            suspended = store.suspensions() if request.applies else {}
            for app in apps:
                if cancel():
                    break
                if app.name in suspended:
                    results.append(_suspended(app, suspended[app.name]))
                    continue
                results.append(_reconcile_app(app, request, revision, source, space, job, redactor,
                                              store, progress, cancel))
            return Result(request, revision, tuple(results))
    except ControllerError as error:
        names = [a.name for a in apps] or [request.app or "*"]
        if error.reason is Reason.VERIFICATION_FAILED and names == ["*"]:
            # refused before gitops.yml is read: record it against the apps it holds back, for status
            names = [a for a in store.apps() if a not in store.suspensions()] or names
        return Result(request, revision, tuple(
            _failed(store, name, request, revision, error) for name in names))


def _reconcile_app(app: App, request: Request, revision: Revision, source: Source, space: Workspace,
                   job: Job, redactor: Redactor, store: Store, progress: Progress,
                   cancel: Cancel) -> AppResult:
    run_id = store.start_run(app.name, revision.sha, request.mode, request.trigger)
    applying = request.applies and app.policy == "apply"
    started = time.monotonic()
    last = store.last_applied(app.name)
    try:
        if applying and last and last != revision.sha and not request.allow_rewrite \
                and not source.descends(last, revision.sha):
            raise ControllerError(
                Reason.HISTORY_REWRITTEN,
                f"app {app.name}: revision {revision.short} does not descend from the last applied "
                f"{last[:12]} (history rewritten or a rollback); pass --allow-rewrite to apply it")

        def play(check: bool) -> Report:
            phase = "check" if check else "apply"
            progress.step(f"{app.name}: {phase} ({app.playbook} on {app.inventory})")
            played = run_playbook(app, space.project, space.runner / phase, job, check=check,
                                  redactor=redactor, cancel=cancel,
                                  on_task=lambda task: progress.task(app.name, phase, task))
            found = report(played)
            store.add_report(run_id, phase, found)
            return found

        checked = play(check=True)
        applied = play(check=False) if applying and (last != revision.sha or checked.drifted) else None
        outcome, reason = decide(checked, applied)
        message = _message(app, checked, applied, applying)
        store.finish_run(run_id, outcome, reason, message, applied is not None,
                         _summary(checked, applied))
        return AppResult(app.name, app.policy, run_id, outcome, reason, message, checked, applied,
                         last, revision.sha, time.monotonic() - started)
    except ControllerError as error:
        store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
        return AppResult(app.name, app.policy, run_id, failure(error.reason), error.reason, error.message,
                         previous=last, revision=revision.sha, seconds=time.monotonic() - started)


def _failed(store: Store, app: str, request: Request, revision: Revision | None,
            error: ControllerError) -> AppResult:
    run_id = store.start_run(app, revision.sha if revision else None, request.mode, request.trigger)
    store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
    return AppResult(app, "", run_id, failure(error.reason), error.reason, error.message,
                     previous=store.last_applied(app), revision=revision.sha if revision else None)


def _suspended(app: App, suspension: dict[str, str]) -> AppResult:
    why = f": {suspension['reason']}" if suspension["reason"] else ""
    return AppResult(app.name, app.policy, None, Outcome.SUSPENDED, None,
                     f"suspended since {suspension['since']}{why}; not applied (`controller resume {app.name}`)")


def _idle(config: Config, store: Store, head: Revision) -> str | None:
    """Why a sync can return at once: every app's last sync was at ``head``, fine, and no check is due."""
    if config.source.verify.mode != "off" and refused_head(store, head.sha):
        return (f"nothing to do: {config.source.branch} is still at {head.short}, which was refused for its "
                "signatures; waiting for a new commit")
    suspended = store.suspensions()
    apps = [a for a in store.apps() if a not in suspended]
    if not apps:
        return None
    schedule = DriftSchedule.of(config.watch)
    now = datetime.now(UTC)
    for app in apps:
        latest = store.latest(app)
        if latest is None or latest["mode"] != "sync" or latest["revision"] != head.sha \
                or latest["outcome"] not in SETTLED or schedule.due(parse_time(latest["started"]), now):
            return None
    return (f"nothing to do: {config.source.branch} is still at {head.short}, already synced "
            f"({', '.join(apps)}), and no drift check is due")


def _select(apps: tuple[App, ...], name: str | None) -> tuple[App, ...]:
    if name is None:
        return apps
    chosen = tuple(a for a in apps if a.name == name)
    if not chosen:
        raise ControllerError(Reason.NOT_FOUND,
                              f"no app {name!r} in gitops.yml (apps: {', '.join(a.name for a in apps)})")
    return chosen


def _message(app: App, checked: Report, applied: Report | None, applying: bool) -> str:
    final = applied or checked
    parts = []
    for status, label in (("changed", "corrected" if applied else "drifted"),
                          ("failed", "failed"), ("unreachable", "unreachable")):
        hosts = final.with_status(status)
        if hosts:
            parts.append(f"{label}: {', '.join(hosts)}")
    if applied is None and checked.drifted and not applying:
        parts.append("not applied (" + ("policy detect" if app.policy == "detect" else "check only") + ")")
    return "; ".join(parts) or f"{len(final.hosts)} host(s) in sync"


def _summary(checked: Report, applied: Report | None) -> dict[str, list[str]]:
    summary = {"drifted": checked.with_status("changed")}
    final = applied or checked
    if applied is not None:
        summary["corrected"] = applied.with_status("changed")
    summary["failed"] = final.with_status("failed")
    summary["unreachable"] = final.with_status("unreachable")
    return summary
