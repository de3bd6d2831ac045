"""A preview as a pull-request comment: Markdown for reviewers, cut to a size a Git host accepts."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from controller.ansible.results import TaskResult
from controller.run.results import AppResult, Gates, Result
from controller.vocabulary import OnFailure, Outcome, TaskStatus

LABELS = {TaskStatus.FAILED: "would fail", TaskStatus.UNREACHABLE: "could not be checked"}
FILES = 20  # changed files named per app; the rest are counted
LIMIT = 60_000  # GitHub refuses comments over 65,536 characters; leave room for what CI adds


def review_markdown(result: Result, limit: int = LIMIT, notes: Sequence[str] = (), ignore_drift: bool = False) -> str:
    """The review comment: a one-line verdict, the run's ``notes`` (an unsigned commit, a setting overridden),
    per app the hosts this change would change, those already drifted without it, those that would fail or
    could not be checked, the unverifiable tasks, then each change's masked diff folded away: this change's
    first, the drift already there after them (left out with ``ignore_drift``)."""
    revision = result.revision
    title = f"### GitOps preview of `{revision.short}` {revision.subject}" if revision else "### GitOps preview"
    head = [title, "", _verdict(result), ""]
    head += [f"> **Note:** {html.escape(note)}" for note in dict.fromkeys(notes)] + ([""] if notes else [])
    sections = [_app(app, ignore_drift) for app in result.apps]
    # this change's before the drift already there; host by host (events arrive in whatever order the hosts
    # answered), tasks in playbook order
    diffs = [(app, task) for drift in (False, True) if not (drift and ignore_drift) for app in result.apps
             for task in sorted(_changed(app, drift), key=lambda t: t.host) if task.diff]
    body = "\n".join(head + [line for section in sections for line in section])
    shown = list(diffs)
    while shown and len(body) + sum(len(_diff(app, task)) for app, task in shown) > limit:
        shown.pop()
    left_out = len(diffs) - len(shown)
    parts = [body]
    for app, task in shown:
        parts.append(_diff(app, task))
    if left_out:
        runs = ", ".join(f"`controller show {a.run_id}`" for a in result.apps if a.run_id)
        parts.append(f"\n_{left_out} of {len(diffs)} diffs left out to stay under {limit:,} characters; "
                     f"all of them on the bastion: {runs}._\n")
    text = "\n".join(parts)
    return text if len(text) <= limit else text[: limit - 80] + "\n\n_(cut at the size limit)_\n"


def _verdict(result: Result) -> str:
    apps = [a for a in result.apps if a.outcome is not Outcome.SUSPENDED]
    if not apps:
        return "**Verdict:** nothing was previewed."
    failed = [a for a in apps if a.outcome in (Outcome.FAILED, Outcome.INTERRUPTED)]
    if failed:
        return f"**Verdict:** the preview failed ({failed[0].app}: {failed[0].message}); the hosts were not checked."
    # machines, not app x host pairs: two apps on one server are one server to the reviewer
    changed = {h for a in apps if a.check for h in a.check.caused(preexisting=False)}
    changing = len(changed)
    drifted = len({h for a in apps if a.check for h in a.check.caused(preexisting=True)} - changed)
    broken = len({h.host for a in apps if a.check for h in a.check.hosts if h.status.broken})
    unverified = sum(1 for a in apps for t in (a.check.tasks if a.check else ()) if t.status is TaskStatus.UNVERIFIED)
    parts = [f"{changing} host(s) would change" if changing else "no host would change"]
    if drifted:
        parts.append(f"{drifted} other host(s) already drifted, not by this change")
    if broken:
        parts.append(f"{broken} host(s) would fail or could not be checked")
    if unverified:
        parts.append(f"{unverified} task(s) check mode cannot verify")
    return "**Verdict:** " + "; ".join(parts) + "."


def _app(app: AppResult, ignore_drift: bool) -> list[str]:
    against = f"against the applied `{app.previous[:12]}`" if app.previous else "(nothing applied yet)"
    lines = [f"#### {app.app}: {app.outcome.value} {against}", ""]
    if app.check is None:
        return [*lines, f"> {app.message}", ""]
    if app.changed:
        shown = ", ".join(f"`{path}`" for path in app.changed[:FILES])
        more = f" and {len(app.changed) - FILES} more" if len(app.changed) > FILES else ""
        lines += [f"Files this revision changes since the applied one ({len(app.changed)}): {shown}{more}", ""]
    rows = [("would change", app.check.caused(preexisting=False))]
    if not ignore_drift:
        rows.append(("already drifted, not by this change", app.check.caused(preexisting=True)))
    rows += [(label, app.check.with_status(status)) for status, label in LABELS.items()]
    lines += ["| hosts | |", "| --- | --- |"]
    lines += [f"| {label} | {', '.join(hosts)} |" for label, hosts in rows if hosts]
    ok = app.check.with_status(TaskStatus.OK)
    if ok:
        lines.append(f"| unchanged | {len(ok)} |")
    lines.append("")
    if app.gates is not None:
        lines += [_gates(app.gates), ""]
    for task in app.check.tasks:
        if task.status.broken:
            lines.append(f"- **{task.host}** {task.status}: `{task.task}`: {html.escape(task.message)}")
    unverified = sorted({t.task for t in app.check.tasks if t.status is TaskStatus.UNVERIFIED})
    if unverified:
        lines += ["", "Tasks check mode cannot verify (they run only in the apply):"]
        lines += [f"- `{task}`" for task in unverified]
    lines.append("")
    return lines


def _gates(gates: Gates) -> str:
    """The rollout a sync would run (gitops.yml ``rollout:`` and ``health:``), in one paragraph."""
    checks = ", ".join(f"`{check}`" for check in gates.checks)
    hosts = sum(len(batch) for batch in gates.batches)
    if gates.on_failure is None:
        return f"**Health checks** after the apply, on each of the {hosts} host(s) it would apply to: {checks}."
    steps = " → ".join(", ".join(f"`{host}`" for host in batch) for batch in gates.batches) or "none"
    gate = f"each must pass {checks} before the next starts" if checks else "each must apply cleanly before the next"
    failure = ("is rolled back to the revision its hosts ran before" if gates.on_failure is OnFailure.ROLLBACK
               else "halts the rollout, leaving the rest untouched")
    return (f"**Rollout:** {len(gates.batches)} batch(es) over the {hosts} host(s) it would apply to: {steps}; "
            f"{gate}; a failed batch {failure}.")


def _changed(app: AppResult, preexisting: bool) -> list[TaskResult]:
    return [t for t in app.check.tasks if t.status is TaskStatus.CHANGED and t.preexisting is preexisting] \
        if app.check else []


def _diff(app: AppResult, task: TaskResult) -> str:
    # a fence longer than any run of backticks in the diff, so the diff cannot close it
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", task.diff)), default=0))
    drift = " (already drifted, not by this change)" if task.preexisting else ""
    summary = html.escape(f"{app.app} / {task.host}: {task.task}{drift}")
    return f"<details><summary>{summary}</summary>\n\n{fence}diff\n{task.diff.rstrip()}\n{fence}\n\n</details>"
