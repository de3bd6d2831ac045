"""One app's run inside a reconcile: check, decide where to apply, apply there, record what happened where."""

from __future__ import annotations

import time
from dataclasses import dataclass

from controller.ansible_config import Job
from controller.apps import App
from controller.drift import Report, decide, host_states, merged, report
from controller.errors import ControllerError
from controller.interrupt import Cancel
from controller.outcomes import Kind, Reason, failure
from controller.plan import Plan, plan_apply
from controller.redact import Redactor
from controller.results import AppResult, Progress, Request
from controller.runner import Stopped, run_playbook
from controller.source import Revision, Source
from controller.state import Store
from controller.workspace import Workspace


@dataclass
class AppRun:
    """The run of ``app`` at ``revision``, recorded in ``store`` as one run of ``kind``."""

    app: App
    request: Request
    kind: Kind
    revision: Revision
    store: Store
    progress: Progress
    cancel: Cancel

    def reconcile(self, source: Source, space: Workspace, job: Job, redactor: Redactor) -> AppResult:
        """Check, then (a sync under policy apply) apply where the plan says; failures become the result."""
        app, store = self.app, self.store
        run_id = store.start_run(app.name, self.revision.sha, self.kind, self.request.trigger)
        started = time.monotonic()
        last = store.last_applied(app.name)
        applying = self.kind is Kind.SYNC and app.policy == "apply"
        try:
            if applying:
                self._refuse_rewrite(source, last)

            def play(check: bool, limit: str | None = None) -> Report:
                return self._play(run_id, space, job, redactor, check=check, limit=limit)

            checked = play(check=True)
            plan = None
            if applying:
                applied_at = {h["host"]: h["revision"] for h in store.hosts(app.name)}
                plan = plan_apply(checked, applied_at, self.revision.sha, force=self.request.force)
            applied = play(check=False, limit=plan.limit) if plan and plan.hosts else None
            outcome, reason = decide(checked, applied)
            message = _message(app, checked, applied, plan, self.kind)
            store.finish_run(run_id, outcome, reason, message, applied is not None, _summary(checked, applied, plan))
            behind = 0
            if self.kind is not Kind.PREVIEW:  # a preview never becomes the app's (or a host's) state
                converged = [h.host for h in (applied.hosts if applied else ()) if h.status in ("ok", "changed")]
                store.record_hosts(app.name, run_id, host_states(checked, applied), converged, self.revision.sha)
                behind = sum(1 for h in store.hosts(app.name) if h["revision"] != self.revision.sha)
            return AppResult(app.name, app.policy, run_id, outcome, reason, message, checked, applied, last,
                             self.revision.sha, time.monotonic() - started, self.kind, plan, behind)
        except ControllerError as error:
            store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
            return AppResult(app.name, app.policy, run_id, failure(error.reason), error.reason, error.message,
                             previous=last, revision=self.revision.sha, seconds=time.monotonic() - started,
                             kind=self.kind)

    def _refuse_rewrite(self, source: Source, last: str | None) -> None:
        revision = self.revision
        if last and last != revision.sha and not self.request.allow_rewrite and not source.descends(last, revision.sha):
            raise ControllerError(
                Reason.HISTORY_REWRITTEN,
                f"app {self.app.name}: revision {revision.short} does not descend from the last applied "
                f"{last[:12]} (history rewritten or a rollback); pass --allow-rewrite to apply it")

    def _play(self, run_id: int, space: Workspace, job: Job, redactor: Redactor, *, check: bool,
              limit: str | None) -> Report:
        app, phase = self.app, "check" if check else "apply"
        where = f" on {limit}" if limit else ""
        self.progress.step(f"{app.name}: {phase} ({app.playbook} on {app.inventory}{where})")
        try:
            played = run_playbook(app, space.project, space.runner / phase, job, check=check, redactor=redactor,
                                  cancel=self.cancel, limit=limit,
                                  on_task=lambda task: self.progress.task(app.name, phase, task))
        except Stopped as stopped:
            # what an interrupted apply had already changed is worth keeping
            self.store.add_report(run_id, phase, report(stopped.partial))
            raise
        found = report(played)
        self.store.add_report(run_id, phase, found)
        return found


def _message(app: App, checked: Report, applied: Report | None, plan: Plan | None, kind: Kind) -> str:
    parts = []
    if applied is not None:
        corrected = applied.with_status("changed")
        if corrected:
            parts.append(f"corrected: {', '.join(corrected)}")
        if plan is not None and not plan.every_host:
            parts.append(f"applied to {', '.join(plan.hosts)} only")
    elif checked.drifted:
        parts.append(f"drifted: {', '.join(checked.with_status('changed'))}")
        why = {Kind.PREVIEW: "preview", Kind.CHECK: "check only"}.get(kind, "policy detect")
        parts.append(f"not applied ({why})")
    final = merged(checked, applied)
    for status in ("failed", "unreachable"):
        hosts = sorted(final.with_status(status))
        if hosts:
            parts.append(f"{status}: {', '.join(hosts)}")
    unverified = sum(h.unverified for h in checked.hosts)
    if applied is None and unverified and not checked.drifted:
        parts.append(f"{unverified} task(s) check mode cannot verify")
    return "; ".join(parts) or f"{len(checked.hosts)} host(s) in sync"


def _summary(checked: Report, applied: Report | None, plan: Plan | None) -> dict[str, list[str]]:
    summary = {"drifted": checked.with_status("changed")}
    if applied is not None:
        summary["corrected"] = applied.with_status("changed")
        summary["applied_to"] = plan.hosts if plan else []
    final = merged(checked, applied)
    summary["failed"] = sorted(final.with_status("failed"))
    summary["unreachable"] = sorted(final.with_status("unreachable"))
    return summary
