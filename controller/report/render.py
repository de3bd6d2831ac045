"""Turning results into output: a summary with diffs for people, one JSON document for machines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from controller.ansible.results import TaskResult
from controller.clock import ago
from controller.report.colour import OUTCOME, STATUS, Paint
from controller.run.results import AppResult, Result
from controller.state.records import AppStatus, AuditEntry, RunDetail, RunRecord
from controller.verify.drift import Report
from controller.vocabulary import EXIT_CODE_MEANINGS, RUNNING, Health, HostState, Phase, Reason, RolloutStep, TaskStatus

SHOWN = (TaskStatus.CHANGED, TaskStatus.FAILED, TaskStatus.UNREACHABLE, TaskStatus.UNVERIFIED)


def result_json(result: Result) -> dict[str, Any]:
    """The reconcile result as one JSON-ready document."""
    revision = asdict(result.revision) if result.revision else None
    return {
        "command": result.request.mode,
        "kind": result.kind.value,
        "dry_run": result.request.dry_run,
        "revision": revision,
        "exit_code": int(result.exit_code),
        "idle": result.idle,
        "apps": [_app_json(a) for a in result.apps],
    }


def _app_json(app: AppResult) -> dict[str, Any]:
    return {
        "name": app.app, "policy": app.policy, "run_id": app.run_id, "outcome": app.outcome.value,
        "reason": app.reason.value if app.reason else None, "message": app.message,
        "revision": app.revision, "previous_revision": app.previous, "seconds": round(app.seconds, 2),
        "exit_code": int(app.exit_code()), "hosts_behind": app.behind,
        "applied_to": app.plan.why if app.plan else None,
        "left_out": app.plan.left_out if app.plan else None,
        Phase.CHECK: _report_json(app.check), Phase.APPLY: _report_json(app.applied),
        "verify": [v.to_json() for v in app.verdicts] or None,
        "changed_files": list(app.changed),
        "health": [{"host": h.host, "health": h.health.value, "detail": h.detail,
                    "checks": [asdict(c) for c in h.checks]} for h in app.health] or None,
        "health_degraded": list(app.degraded), "health_recovered": list(app.recovered),
        "halted": app.halted,
        "held_until": app.held_until,
    }


def _report_json(report: Report | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {"hosts": [asdict(h) for h in report.hosts], "tasks": [asdict(t) for t in report.tasks]}


PLAIN = Paint(False)


def result_text(result: Result, paint: Paint = PLAIN) -> str:
    """The reconcile result for a terminal: revision, one line per app, then drift and failures (``paint``:
    outcomes, statuses and diff lines in colour)."""
    lines = []
    if result.revision:
        rev = result.revision
        lines.append(f"revision {rev.short}  {rev.subject}  ({rev.author}, {rev.committed_at})")
    if result.idle:
        lines.append(result.idle)
    width = max((len(a.app) for a in result.apps), default=4)
    for app in result.apps:
        reason = f" [{app.reason.value}]" if app.reason else ""
        run = f"  (run {app.run_id})" if app.run_id else ""
        outcome = paint(f"{app.outcome.value:<9}", OUTCOME.get(app.outcome))
        lines.append(f"  {app.app:<{width}}  {outcome}  {app.message}{reason}{run}")
    for app in result.apps:
        lines.extend(_verdicts_text(app))
        lines.extend(_health_text(app))
        # what the check found to change is a rollout where the revision is new to the app, drift where it is not
        found = "drift" if app.previous == app.revision else f"rollout of {(app.revision or '')[:12]}"
        for phase, report in ((found, app.check), ("apply", app.applied)):
            if report is not None:
                lines.extend(_tasks_text(f"{app.app} {phase}", report.tasks, diffs=report is app.check, paint=paint))
    return "\n".join(lines) + "\n"


def _verdicts_text(app: AppResult) -> list[str]:
    """Per host: verified (what the manifest covers, what only the last full check saw), or why not."""
    if not app.verdicts:
        return []
    lines = ["", f"{app.app} verify:"]
    for verdict in app.verdicts:
        found = verdict.manifest
        if verdict.verified and found is not None:
            lines.append(f"  {verdict.host}  verified  {len(found.entries)} path(s) and {len(found.resources)} "
                         f"resource(s) of {found.covered} task result(s) as the full check at {found.checked_at} "
                         "left them")
            if found.uncovered:
                lines.append(f"      covered only by that full check: {', '.join(found.uncovered)}")
        else:
            lines.append(f"  {verdict.host}  full check  {verdict.why}")
    return lines


def _health_text(app: AppResult) -> list[str]:
    """The hosts not healthy after the run, and what their failed checks said."""
    shown = [h for h in app.health if h.health is not Health.HEALTHY]
    if not shown:
        return []
    width = max(len(h.host) for h in shown)
    return ["", f"{app.app} health ({len(app.health) - len(shown)} of {len(app.health)} host(s) healthy):",
            *(f"  {h.host:<{width}}  {h.health:<9}  {h.detail}" for h in shown)]


def _tasks_text(title: str, tasks: tuple[TaskResult, ...] | list[TaskResult], diffs: bool,
                paint: Paint = PLAIN) -> list[str]:
    shown = [t for t in tasks if t.status in SHOWN and (diffs or t.status is not TaskStatus.CHANGED)]
    if not shown:
        return []
    lines = ["", f"{title}:"]
    for task in shown:
        detail = f": {task.message}" if task.message else ""
        if task.preexisting:
            detail += " (already drifted at the applied revision, not by this one)"
        status = paint(task.status, STATUS.get(task.status))
        lines.append(f"  {task.host}  {status}  {task.task} ({task.action}){detail}")
        if diffs and task.diff:
            lines.extend(f"      {paint.diff(line)}" for line in task.diff.rstrip("\n").splitlines())
    return lines


def run_text(detail: RunDetail) -> str:
    """One stored run with its drift report (``controller show``)."""
    run = detail.run
    lines = [
        f"run {run.id}  app {run.app}  {run.kind} ({run.trigger})" + (f"  policy {run.policy}" if run.policy else ""),
        f"revision  {run.revision or '-'}",
        f"started   {run.started}   finished {run.finished or '-'}",
        f"outcome   {_outcome(run)}",
        f"message   {run.message}",
    ]
    lines.extend(f"by        {a.who}: {a.act}" + (f" ({a.reason})" if a.reason else "") + f" at {a.at}"
                 for a in detail.audit)
    for phase in Phase:
        hosts = [h for h in detail.hosts if h.phase is phase]
        if hosts:
            lines.append(f"{phase}: " + ", ".join(f"{h.host} {h.status}" for h in hosts))
    lines.extend(_rollout_text(run.summary.get("rollout")))
    for phase, title, diffs in ((Phase.CHECK, "drift report", True), (Phase.APPLY, "apply", False),
                                (Phase.ROLLBACK, "rollback", False)):
        tasks = [TaskResult(t.host, t.task, t.action, t.status, t.diff, t.message)
                 for t in detail.tasks if t.phase is phase]
        lines.extend(_tasks_text(title, tasks, diffs=diffs))
    return "\n".join(lines) + "\n"


def _rollout_text(rollout: dict[str, Any] | None) -> list[str]:
    """A rollout in batches, host by host: in which batch it was applied, what failed, where it was put back."""
    if not rollout:
        return []
    halted = " (halted)" if rollout["failed"] else ""
    lines = [f"rollout   {len(rollout['batches'])} batch(es), {rollout['done']} applied{halted}"]
    hosts = rollout_hosts(rollout)
    width = max(len(h.host) for h in hosts)
    lines.extend(f"  {h.host:<{width}}  {'; '.join(h.story)}" for h in hosts)
    return lines


@dataclass(frozen=True)
class RolloutHost:
    """One host of a rollout in batches, as `show` and the dashboard tell it."""

    batch: int
    host: str
    state: str               # a state's word for its badge: ok, failed, running; "" for none (not reached)
    story: tuple[str, ...]   # what happened to it, in order


def rollout_hosts(rollout: dict[str, Any]) -> list[RolloutHost]:
    """Each host of a rollout (a run's ``summary["rollout"]``, or while it runs ``Staged.now``) and its story."""
    done, current = rollout["done"], rollout.get("current", 0)
    step = RolloutStep(rollout.get("step", RolloutStep.DONE))
    hosts = []
    for number, batch in enumerate(rollout["batches"], 1):
        for host in batch:
            state, story = "ok", [f"applied in batch {number}"]
            if step is not RolloutStep.DONE and number == current:
                state = "running"
                story = [f"{step} (batch {number})"] if step is RolloutStep.APPLYING else [*story, str(step)]
            elif number > done:
                waiting = step is not RolloutStep.DONE and host not in rollout["untouched"]
                state, story = "", ["waiting for its batch" if waiting else "not touched (halted before its batch)"]
            if host in rollout["failed"]:
                state = "failed"
                story.insert(1, rollout["failed"][host])
            if host in rollout["rolled_back"]:
                story.append(f"rolled back to {rollout['rolled_back'][host][:12]}")
            if host in rollout["not_rolled_back"]:
                story.append(f"not rolled back: {rollout['not_rolled_back'][host]}")
            hosts.append(RolloutHost(number, host, state, tuple(story)))
    return hosts


def _outcome(run: RunRecord) -> str:
    return (run.outcome or RUNNING) + (f" [{run.reason}]" if run.reason else "") + _folded(run)


def _folded(run: RunRecord) -> str:
    """``, 8640 times since 23h ago`` for a run standing for the same runs before it (state/retention.py)."""
    return f", {run.folded} times since {ago(run.first_started)}" if run.folded > 1 and run.first_started else ""


def history_text(runs: list[RunRecord]) -> str:
    """Recent runs, newest first (``controller history``)."""
    if not runs:
        return "no runs recorded yet\n"
    app, mode = _width(r.app for r in runs), _width((r.kind for r in runs), 7)
    lines = [f"{'RUN':>5}  {'APP':<{app}} {'MODE':<{mode}} {'TRIGGER':<8} {'REVISION':<12} {'STARTED':<10} OUTCOME"]
    for run in runs:
        lines.append(f"{run.id:>5}  {run.app:<{app}} {run.kind:<{mode}} {run.trigger:<8} "
                     f"{(run.revision or '-')[:12]:<12} {ago(run.started):<10} {_outcome(run)}")
    return "\n".join(lines) + "\n"


def audit_text(entries: list[AuditEntry]) -> str:
    """What people did to apps, newest first (``controller history --audit``)."""
    if not entries:
        return ("no action recorded yet (approve, rollback, unpin, suspend, resume, sync --override-window, the "
                "dashboard's buttons)\n")
    app, who = _width(e.app for e in entries), _width((e.who for e in entries), 3)
    lines = [f"{'WHEN':<10} {'WHO':<{who}} {'ACTION':<15} {'APP':<{app}} {'REVISION':<12} {'RUN':>5}  WHY"]
    for entry in entries:
        lines.append(f"{ago(entry.at):<10} {entry.who:<{who}} {entry.act:<15} {entry.app:<{app}} "
                     f"{(entry.revision or '-')[:12]:<12} {entry.run_id or '-':>5}  {entry.reason}")
    return "\n".join(lines) + "\n"


def status_text(statuses: list[AppStatus]) -> str:
    """Each app: its revision and hosts at it, its state, and what is wrong where (``controller status``)."""
    if not statuses:
        return "no app has been reconciled yet: run `controller sync` or `controller check`\n"
    app = _width(s.app for s in statuses)
    lines = [f"{'APP':<{app}} {'REVISION':<12} {'HOSTS':<7} {'STATE':<11} {'HEALTH':<9} {'LAST RUN':<10} DETAIL"]
    for status in statuses:
        revision = status.applied_revision
        held = status.suspension
        details = [f"SUSPENDED since {_hhmm(held.since)}" + (f": {held.reason}" if held.reason else "")] if held else []
        details.extend(f"{h.host} at {(h.revision or 'nothing')[:12]}: {h.state} since {_hhmm(h.since)}"
                       for h in status.hosts if h.revision != revision or h.state is not HostState.IN_SYNC)
        details.extend(f"{h.host} {h.health} since {_hhmm(h.health_since or h.since)}: {h.health_detail}"
                       for h in status.hosts if h.health in (Health.UNHEALTHY, Health.UNKNOWN))
        if halt := status.halt:
            good = f"; hosts at {halt.last_good[:12]}" if halt.last_good else ""
            details.append(f"{halt.revision[:12]} halted (run {halt.run_id}): {halt.detail}{good}; not applied again "
                           "until the branch moves")
        if pin := status.pin:
            why = f": {pin.reason}" if pin.reason else ""
            details.append(f"PINNED at {pin.revision[:12]} by {pin.by} at {_hhmm(pin.at)}{why}; "
                           f"{pin.rolled_back_from[:12]} held until the branch moves past it or `controller unpin "
                           f"{status.app}`; to make Git match: {pin.revert}")
        failure = status.failure
        if failure:
            verb = "refused" if failure.reason is Reason.VERIFICATION_FAILED else failure.outcome
            details.append(f"{(failure.revision or 'newest revision')[:12]} {verb}: {failure.message}")
        if not details:
            details.append(status.detail)
        hosts = f"{status.hosts_at_revision}/{len(status.hosts)}"
        lines.append(f"{status.app:<{app}} {(revision or '-')[:12]:<12} {hosts:<7} {status.state or RUNNING:<11} "
                     f"{status.health or '-':<9} {ago(status.last_run.started):<10} {'; '.join(details)}")
    return "\n".join(lines) + "\n"


def hosts_text(statuses: list[AppStatus]) -> str:
    """One line per host of every app (``controller status --hosts``)."""
    app = _width(s.app for s in statuses)
    host_width = _width((h.host for s in statuses for h in s.hosts), 24)
    lines = [f"{'APP':<{app}} {'HOST':<{host_width}} {'REVISION':<12} {'APPLIED':<10} {'STATE':<11} {'SINCE':<10} "
             "HEALTH"]
    for status in statuses:
        for host in status.hosts:
            applied = ago(host.applied_at) if host.applied_at else "-"
            health = f"{host.health}: {host.health_detail}" if host.health_detail else host.health or "-"
            lines.append(f"{status.app:<{app}} {host.host:<{host_width}} {(host.revision or '-')[:12]:<12} "
                         f"{applied:<10} {host.state:<11} {ago(host.since):<10} {health}")
    return "\n".join(lines) + "\n"


def exit_codes_markdown() -> str:
    """The README's exit-code table, made from the one declaration in outcomes.py."""
    lines = ["| code | `check`, `verify` | `sync` |", "| --- | --- | --- |"]
    lines.extend(f"| {int(code)} | {check} | {sync} |" for code, (check, sync) in EXIT_CODE_MEANINGS.items())
    return "\n".join(lines) + "\n"


def _width(values: Iterable[str], minimum: int = 12) -> int:
    """A column wide enough for its longest value (app names, run kinds), never narrower than ``minimum``."""
    return max([minimum, *(len(v) for v in values)])


def _hhmm(stamp: str) -> str:
    """``2026-11-23T10:42:05+00:00`` as ``2026-11-23 10:42`` (UTC, as stored)."""
    return stamp[:16].replace("T", " ")
