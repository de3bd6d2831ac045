"""Retention: what the state store keeps of a long history.

A watch verifying every 10 s records 8,640 runs an app a day, nearly all the same. A run that found an app just as
the run before it did (the same revision, outcome, host states, health and findings: each changed, failed or
unverified task with its diff) is unremarkable. Consecutive unremarkable runs that are the same in every column
fold into one row (``folded``, ``first_started``), the newest keeping its id. The first run of a streak is kept,
so a drift that stands for a week is one row of when it was found and one row of how long it stood. Unremarkable
runs older than ``retention.max_age`` or beyond the newest ``retention.max_runs`` of them are deleted.

Never folded nor pruned: an apply, a failure, a run that found something new (a state change), a run an audit
entry, halt or pin names, the run that recorded a host's present state, and each app's newest run of each kind
and newest full check (the drift schedule's clock). Runs recorded before this release are all kept.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from controller.clock import parse_time
from controller.config import RetentionConfig
from controller.state.database import Database
from controller.vocabulary import Kind, Outcome

# outcomes a run may be unremarkable with: nothing failed, nothing was stopped
SETTLED = (Outcome.IN_SYNC, Outcome.CONVERGED, Outcome.DRIFTED, Outcome.UNVERIFIED, Outcome.HELD)
# the columns two runs must share to fold, beside their per-host results and findings
SAME = ("mode", "trigger", "revision", "outcome", "reason", "message", "applied", "summary", "verified", "policy")


def _named_in(*tables: str) -> str:
    """SQL: one of ``tables`` points at the run ``runs.id``."""
    return " OR ".join(f"EXISTS (SELECT 1 FROM {table} WHERE {table}.run_id = runs.id)" for table in tables)


# runs the audit trail, a halt or a pin name: folded, they would point at nothing (a host's present state moves
# to the run that folds the one it points at)
NAMED = _named_in("audit", "halts", "pins")
# and for pruning, the run that recorded a host's present state: when that host was last looked at
REFERENCED = _named_in("audit", "halts", "pins", "hosts")
# why a run id once printed may be gone, said wherever a run is asked for by its id
GONE = "a run the same as the next is folded into it, and old unremarkable runs are pruned (retention)"
PRUNE_BATCH = 500  # runs deleted per finished run at most
# the oldest unremarkable runs looked at for pruning as each run finishes: what goes is always among the oldest,
# and a look at a window keeps the cost of a finish the same however many runs are kept
WINDOW = 2000


def settle(db: Database, run_id: int, retention: RetentionConfig, now: str) -> None:
    """After run ``run_id`` finished (inside its transaction, at ``now``): mark it unremarkable when it found the
    app as the run before it did, fold that run into it when the two are the same, and prune what retention lets
    go."""
    run = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    previous = db.execute("SELECT * FROM runs WHERE app = ? AND id < ? AND mode IN " + _kinds(run["mode"])
                          + " ORDER BY id DESC LIMIT 1", (run["app"], run_id)).fetchone()
    if (run["outcome"] in SETTLED and not run["applied"] and previous is not None and previous["finished"]
            and _state(run) == _state(previous) and _findings(db, run_id) == _findings(db, previous["id"])):
        db.execute("UPDATE runs SET kept = 0 WHERE id = ?", (run_id,))
        if not previous["kept"] and _same(db, run, previous) and not _referenced(db, previous["id"]):
            db.execute("UPDATE runs SET folded = folded + ?, first_started = ? WHERE id = ?",
                       (previous["folded"], previous["first_started"] or previous["started"], run_id))
            db.execute("UPDATE hosts SET run_id = ? WHERE run_id = ?", (run_id, previous["id"]))
            _delete(db, [previous["id"]])
    _prune(db, retention, now)


def _kinds(mode: str) -> str:
    """The kinds whose runs say what an app's hosts are like: a preview (a pull request's revision) is compared
    with previews only, the others with each other."""
    return f"('{Kind.PREVIEW}')" if mode == Kind.PREVIEW else f"('{Kind.CHECK}', '{Kind.SYNC}', '{Kind.VERIFY}')"


def _state(run: Any) -> tuple[object, ...]:
    """What a run found the app's hosts to be: its revision and outcome, and which hosts drifted, failed, were
    unreachable, unhealthy or healthy (the summary's lists, whatever the kind of run)."""
    summary = json.loads(run["summary"])
    return (run["revision"], run["outcome"], run["reason"], *(tuple(summary.get(key) or ()) for key in (
        "drifted", "failed", "unreachable", "unhealthy", "healthy")))


def _findings(db: Database, run_id: int) -> list[tuple[object, ...]]:
    """Each task a run recorded (changed, failed, unverified: what it found), with its diff and message."""
    return [tuple(row) for row in db.execute(
        "SELECT host, task, action, status, diff, message FROM task_results WHERE run_id = ? ORDER BY 1, 2, 3, 4",
        (run_id,))]


def _same(db: Database, run: Any, previous: Any) -> bool:
    if any(run[column] != previous[column] for column in SAME):
        return False
    results = "SELECT phase, host, status, changed, unverified FROM host_results WHERE run_id = ? ORDER BY 1, 2"
    return db.execute(results, (run["id"],)).fetchall() == db.execute(results, (previous["id"],)).fetchall()


def _referenced(db: Database, run_id: int) -> bool:
    return db.execute(f"SELECT 1 FROM runs WHERE id = ? AND ({NAMED})", (run_id,)).fetchone() is not None


def _prune(db: Database, retention: RetentionConfig, now: str) -> None:
    """Delete the unremarkable runs older than ``max_age`` or beyond the newest ``max_runs`` of them."""
    cutoff = (parse_time(now) - timedelta(seconds=retention.max_age)).isoformat(timespec="seconds")
    bound = db.execute("SELECT id FROM runs WHERE kept = 0 ORDER BY id DESC LIMIT 1 OFFSET ?",
                       (retention.max_runs,)).fetchone()
    doomed = [row[0] for row in db.execute(
        "SELECT id FROM runs WHERE id IN (SELECT id FROM runs WHERE kept = 0 AND finished IS NOT NULL ORDER BY id"
        f" LIMIT {WINDOW}) AND (finished < ? OR id <= ?)"
        f" AND NOT ({REFERENCED})"
        # a newer run of the app of the same kind, and (for a full check) a newer full check: what `status`
        # shows and the drift schedule's clock stay
        " AND EXISTS (SELECT 1 FROM runs newer WHERE newer.app = runs.app AND newer.id > runs.id"
        " AND newer.mode = runs.mode)"
        f" AND NOT ({_full('runs')} AND NOT EXISTS (SELECT 1 FROM runs newer WHERE newer.app = runs.app"
        f" AND newer.id > runs.id AND {_full('newer')}))"
        " ORDER BY id LIMIT ?", (cutoff, bound[0] if bound else 0, PRUNE_BATCH))]
    _delete(db, doomed)


def fully_checked(table: str) -> str:
    """SQL: ``table``'s run checked every host it reached in full, and was not stopped before it had (what
    ``Store.latest(full=True)`` looks for)."""
    return f"{table}.verified = 0 AND COALESCE({table}.outcome, '') != '{Outcome.INTERRUPTED}'"


def _full(table: str) -> str:
    """SQL: ``table``'s run is a full check the drift schedule counts from (``Store.latest(app, full=True)``)."""
    return f"{table}.mode IN ('{Kind.CHECK}', '{Kind.SYNC}') AND {fully_checked(table)}"


def _delete(db: Database, runs: list[int]) -> None:
    """Runs and their results (none of them referenced: see REFERENCED)."""
    if not runs:
        return
    marks = ", ".join("?" * len(runs))
    for table in ("task_results", "host_results", "live_tasks", "live_rollouts"):
        db.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", runs)
    db.execute(f"DELETE FROM runs WHERE id IN ({marks})", runs)
