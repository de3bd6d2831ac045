"""The state store: revisions, runs and their per-host and per-task results, in SQLite (WAL)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from controller.ansible.results import TaskResult
from controller.clock import now, parse_time
from controller.config import Config, RetentionConfig
from controller.errors import ControllerError
from controller.source.revision import Revision
from controller.state.database import Database, open_database
from controller.state.migrations import BUCKET_COLUMNS, migrate
from controller.state.records import (
    Approved,
    AppStatus,
    AuditEntry,
    Commit,
    Halt,
    HostChanges,
    HostEvent,
    HostRecord,
    HostResult,
    LiveTask,
    Pin,
    RunDetail,
    RunRecord,
    Suspension,
    Tally,
    TaskRecord,
)
from controller.state.retention import fully_checked, settle
from controller.verify.drift import Report
from controller.verify.health import HostHealth
from controller.verify.manifest import Manifest
from controller.vocabulary import (
    NO_APP,
    RUNNING,
    Act,
    Health,
    HostState,
    Kind,
    Outcome,
    Phase,
    Policy,
    Reason,
    TaskStatus,
    Trigger,
)

E = TypeVar("E", Outcome, Reason, Policy, Health)


def private_directory(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


class Store:
    """A thin typed layer over the store's database; every value it holds is already redacted."""

    def __init__(self, path: Path, retention: RetentionConfig | None = None, clock: Callable[[], str] = now, *,
                 url: str | None = None) -> None:
        """Open (creating and migrating) the store: the SQLite file ``path``, or the PostgreSQL database at ``url``
        when given; ``clock`` stamps what it records (a generated history in the benchmarks runs its own)."""
        self.retention = retention or RetentionConfig()
        self.now = clock
        self._clocks: dict[int, float] = {}  # run -> monotonic start, for runs this process started
        if url is None:
            private_directory(path.parent)
        self.db: Database = open_database(path, url)
        try:
            if url is None:
                for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    if name.exists():
                        name.chmod(0o600)  # whatever the umask: runs hold hostnames, diffs, masked or not
            migrate(self.db)
        except self.db.errors as exc:  # a file that is no store, a schema the database refuses
            self.db.close()
            raise ControllerError(Reason.CONFIG_INVALID, f"state store {self.db.where}: {exc}") from exc
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def of(cls, config: Config) -> Store:
        """The configured store: ``state.url``'s PostgreSQL database, else the state directory's SQLite file."""
        return cls(config.store_path, config.retention, url=config.state.url)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[Database]:
        return self.db.transaction()

    # -- writing -------------------------------------------------------------
    def record_revision(self, revision: Revision) -> None:
        self.db.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (revision.sha, revision.subject, revision.author, revision.committed_at, self.now()))

    def start_run(self, app: str, revision: str | None, kind: Kind, trigger: Trigger,
                  policy: Policy | None = None) -> int:
        """Record a run as started; ``policy`` is the app's in gitops.yml (None: not read yet)."""
        run_id = self.db.insert(
            "INSERT INTO runs (app, revision, mode, trigger, started, policy) VALUES (?, ?, ?, ?, ?, ?)",
            (app, revision, kind, trigger, self.now(), policy))
        self._clocks[run_id] = time.monotonic()
        return run_id
    def add_report(self, run_id: int, phase: str, report: Report) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO host_results (run_id, phase, host, status, changed, unverified)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, phase, h.host, h.status, h.changed, h.unverified) for h in report.hosts])
            db.executemany(
                "INSERT INTO task_results (run_id, phase, host, task, action, status, diff, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, phase, t.host, t.task, t.action, t.status, t.diff, t.message) for t in report.tasks])

    def add_live(self, run_id: int, phase: Phase, results: Collection[TaskResult]) -> None:
        """Task results of a running run, as they arrive (already redacted; their diffs and messages not kept)."""
        stamp = self.now()
        with self._transaction() as db:
            db.executemany("INSERT INTO live_tasks (run_id, phase, host, task, status, at) VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, phase, r.host, r.task, r.status, stamp) for r in results])

    def live(self, run_id: int) -> tuple[LiveTask, ...]:
        """The task results a running run has had so far, in order (none once it finished)."""
        rows = self.db.execute("SELECT phase, host, task, status, at FROM live_tasks WHERE run_id = ? ORDER BY seq",
                               (run_id,))
        return tuple(LiveTask(Phase(r["phase"]), r["host"], r["task"], TaskStatus(r["status"]), r["at"])
                     for r in rows)

    def set_live_rollout(self, run_id: int, rollout: dict[str, Any]) -> None:
        """A running rollout as it stands now (``Staged.summary``), replacing what it was."""
        self.db.execute("INSERT INTO live_rollouts VALUES (?, ?, 1) ON CONFLICT (run_id) DO UPDATE"
                        " SET rollout = excluded.rollout, changes = live_rollouts.changes + 1",
                        (run_id, json.dumps(rollout)))

    def live_rollout(self, run_id: int) -> dict[str, Any] | None:
        """A running run's rollout as it stands (None: none in batches, or the run finished)."""
        row = self.db.execute("SELECT rollout FROM live_rollouts WHERE run_id = ?", (run_id,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def finish_run(self, run_id: int, outcome: Outcome, reason: Reason | None, message: str,
                   applied: bool, summary: dict[str, Any], verified: int = 0) -> None:
        started = self._clocks.pop(run_id, None)
        seconds = None if started is None else time.monotonic() - started
        finished = self.now()
        with self._transaction() as db:  # its live task results go as it ends
            db.execute("DELETE FROM live_tasks WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM live_rollouts WHERE run_id = ?", (run_id,))
            if seconds is None:  # started by another process: to the second, from the times
                seconds = _between(db.execute("SELECT started FROM runs WHERE id = ?", (run_id,)).fetchone()[0],
                                   finished)
            db.execute(
                "UPDATE runs SET finished = ?, outcome = ?, reason = ?, message = ?, applied = ?, summary = ?,"
                " verified = ?, seconds = ? WHERE id = ?",
                (finished, outcome.value, reason.value if reason else None, message, int(applied),
                 json.dumps(summary), verified, seconds, run_id))
            settle(db, run_id, self.retention, finished)

    def interrupt_unfinished(self) -> int:
        """Mark runs left running by a controller that was killed; only call while holding the lock."""
        stamp = self.now()
        with self._transaction() as db:
            db.execute("DELETE FROM live_tasks")
            db.execute("DELETE FROM live_rollouts")
            left = db.execute("SELECT id, started FROM runs WHERE finished IS NULL").fetchall()
            db.executemany("UPDATE runs SET finished = ?, outcome = ?, reason = ?, message = ?, seconds = ?"
                           " WHERE id = ?",
                           [(stamp, Outcome.INTERRUPTED, Reason.INTERRUPTED,
                             "the controller was killed before this run finished; its workspace was wiped",
                             _between(row["started"], stamp), row["id"]) for row in left])
            return len(left)

    def record_hosts(self, app: str, run_id: int, states: Mapping[str, HostState], applied: list[str],
                     revision: str, *, every_host: bool = True, moved: Collection[str] = ()) -> None:
        """Each host's state after a check or sync; ``applied`` hosts now run ``revision``. After a run of the
        whole inventory (``every_host``), hosts no longer in it are forgotten; a --limit run forgets none."""
        stamp = self.now()
        with self._transaction() as db:
            known = {r["host"] for r in db.execute("SELECT host FROM hosts WHERE app = ?", (app,))}
            gone = known - set(states) if every_host else set()
            db.executemany("DELETE FROM hosts WHERE app = ? AND host = ?", [(app, h) for h in gone])
            for host, state in states.items():
                db.execute(
                    "INSERT INTO hosts (app, host, state, since, run_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (app, host) DO UPDATE SET run_id = excluded.run_id,"
                    " since = CASE WHEN hosts.state = excluded.state THEN hosts.since ELSE excluded.since END,"
                    " state = excluded.state", (app, host, state, stamp, run_id))
            db.executemany("UPDATE hosts SET revision = ?, applied_at = ? WHERE app = ? AND host = ?",
                           [(revision, stamp, app, host) for host in applied])
            # at a revision the same for the app: applied_at stays when the playbook last ran there
            db.executemany("UPDATE hosts SET revision = ? WHERE app = ? AND host = ?",
                           [(revision, app, host) for host in moved])

    def record_health(self, app: str, found: Mapping[str, HostHealth], *,
                      declared: bool) -> tuple[list[str], list[str]]:
        """Each host's health after a run (``declared``: the app has health checks; without, health is forgotten);
        a host that could not be asked keeps its last known. Returns the hosts that became unhealthy (degraded)
        and those healthy again (recovered)."""
        degraded: list[str] = []
        recovered: list[str] = []
        stamp = self.now()
        with self._transaction() as db:
            if not declared:
                db.execute("UPDATE hosts SET health = NULL, health_since = NULL, health_detail = '' WHERE app = ?",
                           (app,))
                return degraded, recovered
            rows = db.execute("SELECT host, health FROM hosts WHERE app = ?", (app,))
            before = {r["host"]: r["health"] for r in rows}
            for host, there in sorted(found.items()):
                old = before.get(host, Health.UNKNOWN)
                if host not in before or (there.health is Health.UNKNOWN and old not in (None, Health.UNKNOWN)):
                    continue
                if there.health is Health.UNHEALTHY and old != Health.UNHEALTHY:
                    degraded.append(host)
                elif there.health is Health.HEALTHY and old == Health.UNHEALTHY:
                    recovered.append(host)
                db.execute("UPDATE hosts SET health_since = CASE WHEN COALESCE(health, '') = ? THEN health_since"
                           " ELSE ? END,"
                           " health = ?, health_detail = ? WHERE app = ? AND host = ?",
                           (there.health, stamp, there.health, there.detail, app, host))
        return degraded, recovered

    def halt(self, app: str, revision: str, run_id: int, last_good: str | None, detail: str) -> None:
        """Remember that ``revision``'s rollout halted on ``app`` (again: the newest run and detail)."""
        self.db.execute("INSERT INTO halts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app, revision) DO UPDATE SET"
                        " run_id = excluded.run_id, since = excluded.since, last_good = excluded.last_good,"
                        " detail = excluded.detail", (app, revision, run_id, self.now(), last_good, detail))

    def clear_halts(self, app: str) -> None:
        """A rollout of ``app`` completed: the revisions halted before are history, not holds."""
        self.db.execute("DELETE FROM halts WHERE app = ?", (app,))

    def halted(self, app: str, revision: str | None = None) -> Halt | None:
        """The halt of ``revision`` on ``app`` (None: the newest halt of the app), if any."""
        row = self.db.execute("SELECT * FROM halts WHERE app = ? AND revision = COALESCE(?, revision)"
                              " ORDER BY run_id DESC LIMIT 1", (app, revision)).fetchone()
        return Halt(row["revision"], row["run_id"], row["since"], row["last_good"], row["detail"]) if row else None

    def pin(self, app: str, revision: str, rolled_back_from: str, run_id: int, by: str, reason: str) -> None:
        """Keep ``app`` at ``revision`` (a rollback's, audited with its run) until the branch moves past
        ``rolled_back_from``."""
        self.db.execute("INSERT INTO pins VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app) DO UPDATE SET"
                        ' revision = excluded.revision, rolled_back_from = excluded.rolled_back_from,'
                        ' run_id = excluded.run_id, "by" = excluded."by", at = excluded.at, reason = excluded.reason',
                        (app, revision, rolled_back_from, run_id, by, self.now(), reason))

    def pinned(self, app: str) -> Pin | None:
        """Where a rollback pinned ``app``, if it is."""
        row = self.db.execute("SELECT * FROM pins WHERE app = ?", (app,)).fetchone()
        return Pin(row["revision"], row["rolled_back_from"], row["run_id"], row["by"], row["at"], row["reason"]) \
            if row else None

    def unpin(self, app: str, who: str, reason: str) -> Pin | None:
        """Let ``app`` follow the branch again; the pin it had, if any (its end audited)."""
        with self._transaction() as db:
            found = self.pinned(app)
            if found is not None:
                db.execute("DELETE FROM pins WHERE app = ?", (app,))
                self.record_act(Act.UNPIN, app, who, reason, revision=found.revision)
        return found

    def record_act(self, act: Act, app: str, who: str, reason: str = "", *, revision: str | None = None,
                   run_id: int | None = None) -> int:
        """Add what ``who`` did to ``app`` to the audit trail; its entry's id."""
        return self.db.insert("INSERT INTO audit (at, who, act, app, revision, reason, run_id)"
                              " VALUES (?, ?, ?, ?, ?, ?, ?)", (self.now(), who, act, app, revision, reason, run_id))

    def link_act(self, entry: int, run_id: int) -> None:
        """The run an audit entry (a dashboard's Sync now) started, once it has one."""
        self.db.execute("UPDATE audit SET run_id = ? WHERE id = ?", (run_id, entry))

    def audit(self, app: str | None = None, limit: int = 50, *, run_id: int | None = None) -> list[AuditEntry]:
        """The audit trail newest first: of one app, or of what started one run."""
        rows = self.db.execute("SELECT * FROM audit WHERE app = COALESCE(?, app) AND (? IS NULL OR run_id = ?)"
                               " ORDER BY id DESC LIMIT ?", (app, run_id, run_id, limit))
        return [AuditEntry(r["id"], r["at"], r["who"], Act(r["act"]), r["app"], r["revision"], r["reason"],
                           r["run_id"]) for r in rows]

    def converged_revisions(self, app: str) -> list[str]:
        """The revisions syncs applied to ``app`` and left it converged at, newest first, each once: what a rollback
        goes back to."""
        return list(dict.fromkeys(r[0] for r in self.db.execute(
            "SELECT revision FROM runs WHERE app = ? AND mode = ? AND applied = 1 AND outcome = ? ORDER BY id DESC",
            (app, Kind.SYNC, Outcome.CONVERGED))))

    def record_manifests(self, app: str, manifests: Mapping[str, Manifest | None], *, every_host: bool) -> None:
        """Each host's manifest after a full run (None: not in sync, nothing to trust); a run of the whole
        inventory (``every_host``) also forgets the hosts it did not see."""
        with self._transaction() as db:
            if every_host:
                db.execute("DELETE FROM manifests WHERE app = ?", (app,))
            db.executemany("INSERT INTO manifests VALUES (?, ?, ?, ?, ?) ON CONFLICT (app, host) DO UPDATE SET"
                           " digest = excluded.digest, recorded = excluded.recorded, body = excluded.body", [
                (app, host, m.digest if m else "", self.now(), m.to_json() if m else None)
                for host, m in manifests.items()])

    def retire_missing(self, present: list[str], revision: str) -> list[str]:
        """Retire the apps no longer in gitops.yml at ``revision`` (history stays); return them."""
        gone = [app for app in self.apps() if app not in present]
        with self._transaction() as db:
            db.executemany("INSERT INTO retired VALUES (?, ?, ?) ON CONFLICT (app) DO UPDATE SET"
                           " since = excluded.since, revision = excluded.revision",
                           [(a, self.now(), revision) for a in gone])
            db.executemany("DELETE FROM retired WHERE app = ?", [(a,) for a in present])
        return gone

    def announce_revision(self, app: str, revision: str) -> bool:
        """Remember ``revision`` as announced for ``app``; False when it already was."""
        row = self.db.execute("SELECT revision FROM conditions WHERE app = ?", (app,)).fetchone()
        if row is not None and row["revision"] == revision:
            return False
        self.db.execute("INSERT INTO conditions (app, condition, since, revision) VALUES (?, 'ok', ?, ?)"
                        " ON CONFLICT (app) DO UPDATE SET revision = excluded.revision", (app, self.now(), revision))
        return True

    def suspend(self, app: str, who: str, reason: str) -> Suspension | None:
        """Suspend ``app`` (again: since when stays, a new reason replaces the old); the suspension it had. Audited."""
        with self._transaction() as db:
            before = self.suspensions().get(app)
            if before is None:
                db.execute("INSERT INTO suspensions VALUES (?, ?, ?)", (app, self.now(), reason))
            elif reason:
                db.execute("UPDATE suspensions SET reason = ? WHERE app = ?", (reason, app))
            self.record_act(Act.SUSPEND, app, who, reason)
        return before

    def approve(self, app: str, revision: str, who: str, reason: str) -> Approved:
        """Let the next sync apply ``revision`` of ``app``; approving it again keeps the first approval (and is
        not audited again)."""
        with self._transaction() as db:
            if db.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          (app, revision, who, self.now(), reason)).rowcount:
                self.record_act(Act.APPROVE, app, who, reason, revision=revision)
        found = self.approval(app, revision)
        assert found is not None
        return found

    def require_approval(self, app: str, required: bool) -> None:
        """Remember whether the revision just applied to ``app`` required approvals (the next one needs one if so)."""
        if required:
            self.db.execute("INSERT INTO approval_required VALUES (?, ?) ON CONFLICT DO NOTHING", (app, self.now()))
        else:
            self.db.execute("DELETE FROM approval_required WHERE app = ?", (app,))

    def resume(self, app: str, who: str, reason: str) -> bool:
        """Lift a suspension (audited); False when the app was not suspended."""
        with self._transaction() as db:
            lifted = db.execute("DELETE FROM suspensions WHERE app = ?", (app,)).rowcount > 0
            if lifted:
                self.record_act(Act.RESUME, app, who, reason)
        return lifted

    def set_condition(self, app: str, condition: str) -> None:
        """Remember what was last announced for ``app``, so the same state is not announced twice."""
        self.db.execute("INSERT INTO conditions (app, condition, since) VALUES (?, ?, ?) ON CONFLICT (app)"
                        " DO UPDATE SET condition = excluded.condition, since = excluded.since",
                        (app, condition, self.now()))

    # -- reading -------------------------------------------------------------
    def suspensions(self) -> dict[str, Suspension]:
        """Suspended apps, with since when and why."""
        return {r["app"]: Suspension(r["since"], r["reason"])
                for r in self.db.execute("SELECT * FROM suspensions ORDER BY app")}

    def condition(self, app: str) -> str | None:
        row = self.db.execute("SELECT condition FROM conditions WHERE app = ?", (app,)).fetchone()
        return str(row["condition"]) if row else None

    def last_applied(self, app: str) -> str | None:
        """The revision last applied successfully to any host of the app (the newest such apply)."""
        row = self.db.execute("SELECT revision FROM hosts WHERE app = ? AND revision IS NOT NULL"
                              " ORDER BY applied_at IS NULL, applied_at DESC, run_id DESC LIMIT 1", (app,)).fetchone()
        return str(row["revision"]) if row else None

    def applied_revisions(self, app: str | None) -> list[str]:
        """The revisions last applied to ``app`` (to every active app when None), each once: what signature
        checks of mode ``all`` start from."""
        apps = [app] if app else self.active_apps()
        return list(dict.fromkeys(sha for a in apps if (sha := self.last_applied(a))))

    def hosts(self, app: str) -> list[HostRecord]:
        """Every host of the app: its applied revision and when, its state and since when."""
        return [HostRecord(r["host"], r["revision"], r["applied_at"], HostState(r["state"]), r["since"], r["run_id"],
                           _optional(Health, r["health"]), r["health_since"], r["health_detail"])
                for r in self.db.execute("SELECT host, revision, applied_at, state, since, run_id, health,"
                                         " health_since, health_detail FROM hosts WHERE app = ? ORDER BY host",
                                         (app,))]

    def manifests(self, app: str) -> dict[str, Manifest | None]:
        """The hosts of the app's last full runs and their manifests (None: not found in sync)."""
        return {r["host"]: Manifest.from_json(r["body"]) if r["body"] else None
                for r in self.db.execute("SELECT host, body FROM manifests WHERE app = ?", (app,))}

    def runs(self, app: str | None = None, limit: int = 20, *, outcome: str | None = None,
             trigger: str | None = None, kind: str | None = None, offset: int = 0) -> list[RunRecord]:
        """Runs newest first, optionally of one app, outcome (``running``: not finished), trigger and kind."""
        where, values = self._run_filter(app, outcome, trigger, kind)
        rows = self.db.execute(f"SELECT * FROM runs{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                               (*values, limit, offset))
        return [_run(row) for row in rows]

    def count_runs(self, app: str | None = None, *, outcome: str | None = None, trigger: str | None = None,
                   kind: str | None = None) -> int:
        """How many runs ``runs`` would page through with the same filters."""
        where, values = self._run_filter(app, outcome, trigger, kind)
        return int(self.db.execute(f"SELECT COUNT(*) FROM runs{where}", values).fetchone()[0])

    @staticmethod
    def _run_filter(app: str | None, outcome: str | None, trigger: str | None,
                    kind: str | None = None) -> tuple[str, tuple[str, ...]]:
        clauses, values = [], []
        for column, value in (("app", app), ("outcome", outcome), ("trigger", trigger), ("mode", kind)):
            if value == RUNNING and column == "outcome":
                clauses.append("outcome IS NULL")
            elif value:
                clauses.append(f"{column} = ?")
                values.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(values)

    def stamp(self) -> str:
        """A value that changes whenever a run starts or ends, its hosts' states are recorded (just after it
        ends), or an app is suspended or resumed: live pages compare it to know when to refresh."""
        row = self.db.execute(
            "SELECT (SELECT MAX(id) FROM runs), (SELECT COUNT(*) FROM runs WHERE finished IS NULL),"
            " (SELECT MAX(run_id) FROM hosts)").fetchone()
        return ":".join([*(str(value) for value in row), *(app + s.since for app, s in self.suspensions().items())])

    def live_stamp(self, run_id: int) -> str:
        """How many task results a running run has had so far, and how many times its rollout moved on (0 once
        it ended: they go with it)."""
        row = self.db.execute("SELECT (SELECT COUNT(*) FROM live_tasks WHERE run_id = ?),"
                              " (SELECT changes FROM live_rollouts WHERE run_id = ?)", (run_id, run_id)).fetchone()
        return f"{row[0]}:{row[1] or 0}"

    def run(self, run_id: int) -> RunDetail | None:
        """One run with its per-host results and its tasks, in the order they were recorded."""
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        hosts = self.db.execute(f"SELECT * FROM host_results WHERE run_id = ? ORDER BY {self.db.recorded_order}",
                                (run_id,)).fetchall()
        tasks = self.db.execute("SELECT * FROM task_results WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return RunDetail(
            _run(row),
            tuple(HostResult(Phase(h["phase"]), h["host"], TaskStatus(h["status"]), h["changed"], h["unverified"])
                  for h in hosts),
            tuple(TaskRecord(Phase(t["phase"]), t["host"], t["task"], t["action"], TaskStatus(t["status"]),
                             t["diff"], t["message"]) for t in tasks),
            tuple(reversed(self.audit(run_id=run_id))))

    def host_events(self, app: str, host: str, limit: int = 50) -> list[HostEvent]:
        """What the newest full runs of ``app`` (not previews) did to ``host``, newest first."""
        # a run has a row per phase that reached the host: three at most (check, apply, rollback)
        rows = self.db.execute(
            "SELECT runs.*, host_results.phase AS phase, host_results.status AS status FROM runs"
            " JOIN host_results ON host_results.run_id = runs.id WHERE runs.app = ? AND host_results.host = ?"
            " AND runs.mode != ? ORDER BY runs.id DESC LIMIT ?", (app, host, Kind.PREVIEW, limit * 3)).fetchall()
        runs: dict[int, tuple[RunRecord, dict[Phase, TaskStatus]]] = {}
        for row in rows:
            _, statuses = runs.setdefault(row["id"], (_run(row), {}))
            statuses[Phase(row["phase"])] = TaskStatus(row["status"])
        return [HostEvent.of(run, host, statuses) for run, statuses in list(runs.values())[:limit]]

    def apps(self) -> list[str]:
        """Apps reconciled here (previews do not count) and not retired from gitops.yml."""
        # one index lookup per app rather than a scan of every run: each step finds the next name after the last
        return [r["app"] for r in self.db.execute(
            "WITH RECURSIVE named(app) AS (SELECT MIN(app) FROM runs"
            " UNION ALL SELECT (SELECT MIN(app) FROM runs WHERE app > named.app) FROM named WHERE app IS NOT NULL)"
            " SELECT app FROM named WHERE app IS NOT NULL AND app != ? AND app NOT IN (SELECT app FROM retired)"
            " AND EXISTS (SELECT 1 FROM runs WHERE runs.app = named.app AND mode != ?) ORDER BY app",
            (NO_APP, Kind.PREVIEW))]

    def active_apps(self) -> list[str]:
        """Apps reconciled here and not suspended: what a sync of every app goes through."""
        suspended = self.suspensions()
        return [app for app in self.apps() if app not in suspended]

    def latest(self, app: str, *kinds: Kind, full: bool = False) -> RunRecord | None:
        """The app's newest run of one of ``kinds`` (checks and syncs when none is given); ``full``: only
        a run that fully checked every host (the drift schedule's clock), not one stopped before it had."""
        wanted = list(kinds) or [Kind.CHECK, Kind.SYNC]
        row = self.db.execute(f"SELECT * FROM runs WHERE app = ? AND mode IN ({','.join('?' * len(wanted))})"
                              + (f" AND {fully_checked('runs')}" if full else "") + " ORDER BY id DESC LIMIT 1",
                              (app, *wanted)).fetchone()
        return _run(row) if row else None

    def latest_sync(self) -> RunRecord | None:
        """The newest sync of any app not retired, or of no app (one that failed before it read gitops.yml)."""
        row = self.db.execute("SELECT * FROM runs WHERE mode = ? AND app NOT IN (SELECT app FROM retired)"
                              " ORDER BY id DESC LIMIT 1", (Kind.SYNC,)).fetchone()
        return _run(row) if row else None

    def previous_run(self, app: str, run_id: int, outcomes: Collection[Outcome]) -> RunRecord | None:
        """The app's last check or sync before run ``run_id`` that ended in one of ``outcomes`` (what a forge was
        last told about it: a run that ended otherwise, interrupted, told it nothing)."""
        marks = ", ".join("?" * len(outcomes))
        row = self.db.execute(f"SELECT * FROM runs WHERE app = ? AND id < ? AND mode IN (?, ?) AND outcome IN ({marks})"
                              " ORDER BY id DESC LIMIT 1", (app, run_id, Kind.CHECK, Kind.SYNC, *outcomes)).fetchone()
        return _run(row) if row else None

    def status(self) -> list[AppStatus]:
        """Per app: its applied revision and hosts at it, its state, and the newest failure if it is newer."""
        statuses = []
        suspended = self.suspensions()
        for app in self.apps():
            latest = self.latest(app)
            assert latest is not None
            good = self._latest_good(app) or latest
            failed = latest.outcome in (Outcome.FAILED, Outcome.INTERRUPTED) and good is not latest
            hosts = tuple(self.hosts(app))
            revision = self.last_applied(app)
            statuses.append(AppStatus(
                app=app, policy=good.policy, suspension=suspended.get(app), applied_revision=revision,
                hosts_at_revision=sum(1 for h in hosts if revision and h.revision == revision),
                state=good.outcome, reason=good.reason, detail=good.message, last_run=latest,
                failure=latest if failed else None, hosts=hosts, halt=self.halted(app),
                pin=self.pinned(app)))
        return statuses

    def _latest_good(self, app: str) -> RunRecord | None:
        """The newest check or sync that did not fail outright: what the hosts are known to look like."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE app = ? AND mode != ? AND outcome IS NOT NULL AND outcome NOT IN (?, ?)"
            " ORDER BY id DESC LIMIT 1", (app, Kind.PREVIEW, Outcome.FAILED, Outcome.INTERRUPTED)).fetchone()
        return _run(row) if row else None

    def run_tallies(self) -> list[Tally]:
        """Finished checks, syncs and verifies of apps not retired, per app, kind and outcome: how many, their
        seconds in all, how many took at most each of DURATION_BUCKETS, and when the last ended (for /metrics)."""
        return [Tally(row["app"], Kind(row["mode"]), Outcome(row["outcome"]), row["runs"], row["seconds"],
                      row["last_finished"], tuple(row[c] for c in BUCKET_COLUMNS)) for row in self.db.execute(
            "SELECT * FROM run_tallies WHERE app NOT IN (SELECT app FROM retired) ORDER BY app, mode, outcome")]

    def host_changes(self) -> list[HostChanges]:
        """Per app not retired, the hosts its syncs rolled a revision out to and corrected drift on (for /metrics)."""
        return [HostChanges(row["app"], row["rolled_out"], row["corrected"]) for row in self.db.execute(
            "SELECT * FROM host_changes WHERE app NOT IN (SELECT app FROM retired) ORDER BY app")]

    def requires_approval(self, app: str) -> bool:
        """Whether the revision last applied to ``app`` required approvals."""
        return self.db.execute("SELECT 1 FROM approval_required WHERE app = ?", (app,)).fetchone() is not None

    def approval(self, app: str, revision: str) -> Approved | None:
        """Who approved ``revision`` of ``app``, if anyone did."""
        row = self.db.execute("SELECT revision, who, at, reason FROM approvals WHERE app = ? AND revision = ?",
                              (app, revision)).fetchone()
        return Approved(row["revision"], row["who"], row["at"], row["reason"]) if row else None

    def awaiting_approval(self, app: str) -> str | None:
        """The revision ``app``'s latest finished sync held for approval (whatever else it found: a host
        unreachable, a failure), while nobody has approved it."""
        row = self.db.execute("SELECT revision, summary FROM runs WHERE app = ? AND mode = ? AND finished IS NOT NULL"
                              " ORDER BY id DESC LIMIT 1", (app, Kind.SYNC)).fetchone()
        if row is None or (json.loads(row["summary"]).get("approval") or {}).get("waiting") is None:
            return None
        return None if self.approval(app, row[0]) else str(row[0])

    def revisions_named(self, app: str, prefix: str) -> list[str]:
        """The revisions ``app``'s syncs checked whose sha starts with ``prefix`` (a short sha)."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT revision FROM runs WHERE app = ? AND mode = ? AND substr(revision, 1, ?) = ?"
            " ORDER BY revision",
            (app, Kind.SYNC, len(prefix), prefix.lower()))]

    def revision(self, sha: str) -> Commit | None:
        """A revision as recorded when first reconciled."""
        row = self.db.execute("SELECT * FROM revisions WHERE sha = ?", (sha,)).fetchone()
        return Commit(row["sha"], row["subject"], row["author"], row["committed_at"], row["first_seen"]) if row \
            else None


def _run(row: Any) -> RunRecord:
    return RunRecord(
        id=row["id"], app=row["app"], revision=row["revision"], kind=Kind(row["mode"]), trigger=Trigger(row["trigger"]),
        started=row["started"], finished=row["finished"], outcome=_optional(Outcome, row["outcome"]),
        reason=_optional(Reason, row["reason"]), message=row["message"], applied=bool(row["applied"]),
        summary=json.loads(row["summary"]), verified=row["verified"], seconds=row["seconds"],
        policy=_optional(Policy, row["policy"]), folded=row["folded"], first_started=row["first_started"],
        kept=bool(row["kept"]))


def _optional(kind: type[E], value: str | None) -> E | None:
    return None if value is None else kind(value)


def _between(started: str, finished: str) -> float:
    """Seconds from one stored time to another (to the second, as stored)."""
    return (parse_time(finished) - parse_time(started)).total_seconds()
