"""The store's records as JSON documents: what `status`, `history` and `show --json` print and /api/ returns.

The keys and their order are a contract (scripts read them): they are the store's column names, as they were
when the store handed out its rows as they are.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from controller.state.records import AppStatus, AuditEntry, Commit, RunDetail, RunRecord, Suspension
from controller.vocabulary import RUNNING


def run_document(run: RunRecord) -> dict[str, Any]:
    """One run, as `controller history --json` lists it."""
    return {"id": run.id, "app": run.app, "revision": run.revision, "mode": run.kind, "trigger": run.trigger,
            "started": run.started, "finished": run.finished, "outcome": run.outcome, "reason": run.reason,
            "message": run.message, "applied": run.applied, "summary": run.summary, "verified": run.verified,
            "seconds": run.seconds, "policy": run.policy, "folded": run.folded, "first_started": run.first_started,
            "kept": run.kept}


def detail_document(detail: RunDetail) -> dict[str, Any]:
    """One run with its per-host results and tasks, as `controller show --json` prints it."""
    return {**run_document(detail.run), "hosts": [asdict(h) for h in detail.hosts],
            "tasks": [asdict(t) for t in detail.tasks], "audit": [asdict(a) for a in detail.audit]}


def audit_document(entry: AuditEntry) -> dict[str, Any]:
    """What a person did to an app, as `controller history --audit --json` lists it."""
    return asdict(entry)


def status_document(status: AppStatus) -> dict[str, Any]:
    """One app, as `controller status --json` lists it."""
    failure = status.failure
    return {
        "app": status.app,
        "policy": status.policy,
        "suspended": status.suspended,
        "suspension": suspension_document(status.suspension),
        "applied_revision": status.applied_revision,
        "hosts_at_revision": status.hosts_at_revision,
        "hosts_total": len(status.hosts),
        "state": status.state or RUNNING,
        "health": status.health,
        "reason": status.reason,
        "detail": status.detail,
        "last_run": status.last_run.started,
        "last_run_id": status.last_run.id,
        "failure": None if failure is None else {
            "revision": failure.revision, "outcome": failure.outcome, "reason": failure.reason,
            "message": failure.message, "run_id": failure.id, "started": failure.started},
        "hosts": [asdict(h) for h in status.hosts],
        "halt": None if status.halt is None else asdict(status.halt),
        "pin": None if status.pin is None else {**asdict(status.pin), "revert": status.pin.revert},
    }


def commit_document(commit: Commit | None) -> dict[str, Any] | None:
    """A recorded revision (the dashboard's ``commit`` of an app or a run)."""
    return None if commit is None else asdict(commit)


def suspension_document(suspension: Suspension | None) -> dict[str, Any] | None:
    return None if suspension is None else asdict(suspension)
