"""The state store: revisions, runs and their per-host and per-task results, in SQLite (WAL)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.errors import ControllerError
from controller.report.drift import Report
from controller.source.revision import Revision
from controller.verify.manifest import Manifest
from controller.vocabulary import HostState, Kind, Outcome, Reason

# The upper bounds (seconds) of the run-duration histogram that run_tallies keeps (migration 5): a contract.
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_BUCKET_COLUMNS = tuple(f"le{b}".replace(".", "_") for b in DURATION_BUCKETS)

# Numbered migrations: the schema is a contract; append, never edit.
MIGRATIONS = (
    """
    CREATE TABLE revisions (
        sha TEXT PRIMARY KEY, subject TEXT NOT NULL, author TEXT NOT NULL,
        committed_at TEXT NOT NULL, first_seen TEXT NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, revision TEXT,
        mode TEXT NOT NULL, trigger TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
        outcome TEXT, reason TEXT, message TEXT NOT NULL DEFAULT '',
        applied INTEGER NOT NULL DEFAULT 0, summary TEXT NOT NULL DEFAULT '{}');
    CREATE INDEX runs_app ON runs (app, id);
    CREATE TABLE host_results (
        run_id INTEGER NOT NULL REFERENCES runs (id), phase TEXT NOT NULL, host TEXT NOT NULL,
        status TEXT NOT NULL, changed INTEGER NOT NULL, unverified INTEGER NOT NULL,
        PRIMARY KEY (run_id, phase, host));
    CREATE TABLE task_results (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs (id),
        phase TEXT NOT NULL, host TEXT NOT NULL, task TEXT NOT NULL, action TEXT NOT NULL,
        status TEXT NOT NULL, diff TEXT NOT NULL, message TEXT NOT NULL);
    CREATE INDEX task_results_run ON task_results (run_id);
    """,
    """
    CREATE TABLE suspensions (app TEXT PRIMARY KEY, since TEXT NOT NULL, reason TEXT NOT NULL);
    CREATE TABLE conditions (app TEXT PRIMARY KEY, condition TEXT NOT NULL, since TEXT NOT NULL);
    """,
    # 3: per-host state and applied revision, retired apps, the revision last announced as applied.
    # runs.mode now holds the run's kind (check, preview, sync); older dry runs stay recorded as sync.
    """
    CREATE TABLE hosts (
        app TEXT NOT NULL, host TEXT NOT NULL,
        revision TEXT, applied_at TEXT,
        state TEXT NOT NULL, since TEXT NOT NULL, run_id INTEGER,
        PRIMARY KEY (app, host));
    CREATE TABLE retired (app TEXT PRIMARY KEY, since TEXT NOT NULL, revision TEXT NOT NULL);
    ALTER TABLE conditions ADD COLUMN revision TEXT;
    INSERT OR IGNORE INTO hosts (app, host, revision, applied_at, state, since, run_id)
        SELECT r.app, h.host, r.revision, r.finished, 'in-sync', r.finished, r.id
        FROM runs r JOIN host_results h ON h.run_id = r.id
        WHERE r.id IN (SELECT MAX(id) FROM runs WHERE mode = 'sync' AND applied = 1 AND outcome = 'converged'
                       GROUP BY app);
    """,
    # 4: each host's manifest from the last full run (``body`` NULL: that run did not find it in sync);
    # runs.verified counts the hosts a run verified against their manifests instead of fully checking
    """
    CREATE TABLE manifests (
        app TEXT NOT NULL, host TEXT NOT NULL, digest TEXT NOT NULL, recorded TEXT NOT NULL, body TEXT,
        PRIMARY KEY (app, host));
    ALTER TABLE runs ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: how long each run took and the app's policy at the time (a sync that applied a detect app did so on
    # request); what /metrics counts, kept by the database itself as runs finish, so a scrape reads a few rows
    # however long the history: per app, kind and outcome, how many runs, their seconds, how many took at most
    # each of DURATION_BUCKETS, and when the last ended. Older runs count to the second, from their times.
    f"""
    ALTER TABLE runs ADD COLUMN seconds REAL;
    ALTER TABLE runs ADD COLUMN policy TEXT;
    UPDATE runs SET seconds = (julianday(finished) - julianday(started)) * 86400 WHERE finished IS NOT NULL;
    CREATE TABLE run_tallies (
        app TEXT NOT NULL, mode TEXT NOT NULL, outcome TEXT NOT NULL, runs INTEGER NOT NULL, seconds REAL NOT NULL,
        last_finished TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in _BUCKET_COLUMNS)},
        PRIMARY KEY (app, mode, outcome));
    INSERT INTO run_tallies
        SELECT app, mode, outcome, COUNT(*), COALESCE(SUM(seconds), 0), COALESCE(MAX(finished), MAX(started)),
               {", ".join(f"SUM(seconds <= {b})" for b in DURATION_BUCKETS)}
        FROM runs WHERE outcome IS NOT NULL AND mode != 'preview' GROUP BY app, mode, outcome;
    CREATE TRIGGER runs_tally AFTER UPDATE OF outcome ON runs
        WHEN OLD.outcome IS NULL AND NEW.outcome IS NOT NULL AND NEW.mode != 'preview'
    BEGIN
        INSERT INTO run_tallies VALUES (NEW.app, NEW.mode, NEW.outcome, 1, COALESCE(NEW.seconds, 0),
                                        COALESCE(NEW.finished, NEW.started),
                                        {", ".join(f"COALESCE(NEW.seconds, 0) <= {b}" for b in DURATION_BUCKETS)})
        ON CONFLICT (app, mode, outcome) DO UPDATE SET runs = runs + 1, seconds = seconds + excluded.seconds,
            last_finished = MAX(last_finished, excluded.last_finished),
            {", ".join(f"{c} = {c} + excluded.{c}" for c in _BUCKET_COLUMNS)};
    END;
    """,
)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration (a trigger's body holds semicolons of its own)."""
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                yield current
            current = ""


def private_directory(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def now() -> str:
    """The current UTC time as stored and shown."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """A thin typed layer over the SQLite file; every value it holds is already redacted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        private_directory(path.parent)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._clocks: dict[int, float] = {}  # run -> monotonic start, for runs this process started
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if name.exists():
                    name.chmod(0o600)  # whatever the umask: runs hold hostnames, diffs, masked or not
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"state store {path}: {exc}") from exc
        except ControllerError:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise ControllerError(Reason.CONFIG_INVALID,
                                  f"state store {self.path} has schema {version}, newer than this controller "
                                  f"knows ({len(MIGRATIONS)}): upgrade the controller, or point state_dir elsewhere")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- writing -------------------------------------------------------------
    def record_revision(self, revision: Revision) -> None:
        self.db.execute("INSERT OR IGNORE INTO revisions VALUES (?, ?, ?, ?, ?)",
                        (revision.sha, revision.subject, revision.author, revision.committed_at, now()))

    def start_run(self, app: str, revision: str | None, mode: str, trigger: str, policy: str | None = None) -> int:
        """Record a run as started; ``policy`` is the app's in gitops.yml (None: not read yet)."""
        cursor = self.db.execute(
            "INSERT INTO runs (app, revision, mode, trigger, started, policy) VALUES (?, ?, ?, ?, ?, ?)",
            (app, revision, mode, trigger, now(), policy))
        run_id = int(cursor.lastrowid or 0)
        self._clocks[run_id] = time.monotonic()
        return run_id

    def add_report(self, run_id: int, phase: str, report: Report) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO host_results VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, phase, h.host, h.status, h.changed, h.unverified) for h in report.hosts])
            db.executemany(
                "INSERT INTO task_results (run_id, phase, host, task, action, status, diff, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, phase, t.host, t.task, t.action, t.status, t.diff, t.message) for t in report.tasks])

    def finish_run(self, run_id: int, outcome: Outcome, reason: Reason | None, message: str,
                   applied: bool, summary: dict[str, Any], verified: int = 0) -> None:
        started = self._clocks.pop(run_id, None)
        seconds = None if started is None else time.monotonic() - started
        self.db.execute(
            "UPDATE runs SET finished = ?1, outcome = ?2, reason = ?3, message = ?4, applied = ?5, summary = ?6,"
            " verified = ?7, seconds = COALESCE(?8, (julianday(?1) - julianday(started)) * 86400) WHERE id = ?9",
            (now(), outcome.value, reason.value if reason else None, message, int(applied),
             json.dumps(summary), verified, seconds, run_id))

    def interrupt_unfinished(self) -> int:
        """Mark runs left running by a controller that was killed; only call while holding the lock."""
        return self.db.execute(
            "UPDATE runs SET finished = ?1, outcome = ?2, reason = ?3, message = ?4,"
            " seconds = (julianday(?1) - julianday(started)) * 86400 WHERE finished IS NULL",
            (now(), Outcome.INTERRUPTED.value, Reason.INTERRUPTED.value,
             "the controller was killed before this run finished; its workspace was wiped")).rowcount

    def record_hosts(self, app: str, run_id: int, states: Mapping[str, HostState], applied: list[str],
                     revision: str) -> None:
        """Each host's state after a check or sync of the whole inventory; ``applied`` hosts now run
        ``revision``. Hosts no longer in the inventory are forgotten."""
        stamp = now()
        with self._transaction() as db:
            known = {r["host"] for r in db.execute("SELECT host FROM hosts WHERE app = ?", (app,))}
            db.executemany("DELETE FROM hosts WHERE app = ? AND host = ?", [(app, h) for h in known - set(states)])
            for host, state in states.items():
                db.execute(
                    "INSERT INTO hosts (app, host, state, since, run_id) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (app, host) DO UPDATE SET run_id = excluded.run_id,"
                    " since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END,"
                    " state = excluded.state", (app, host, state, stamp, run_id))
            db.executemany("UPDATE hosts SET revision = ?, applied_at = ? WHERE app = ? AND host = ?",
                           [(revision, stamp, app, host) for host in applied])

    def record_manifests(self, app: str, manifests: dict[str, Manifest | None], *, every_host: bool) -> None:
        """Each host's manifest after a full run (None: not in sync, nothing to trust); a run of the whole
        inventory (``every_host``) also forgets the hosts it did not see."""
        with self._transaction() as db:
            if every_host:
                db.execute("DELETE FROM manifests WHERE app = ?", (app,))
            db.executemany("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?, ?)", [
                (app, host, m.digest if m else "", now(), m.to_json() if m else None)
                for host, m in manifests.items()])

    def retire_missing(self, present: list[str], revision: str) -> list[str]:
        """Retire the apps no longer in gitops.yml at ``revision`` (history stays); return them."""
        gone = [app for app in self.apps() if app not in present]
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO retired VALUES (?, ?, ?)", [(a, now(), revision) for a in gone])
            db.executemany("DELETE FROM retired WHERE app = ?", [(a,) for a in present])
        return gone

    def announce_revision(self, app: str, revision: str) -> bool:
        """Remember ``revision`` as announced for ``app``; False when it already was."""
        row = self.db.execute("SELECT revision FROM conditions WHERE app = ?", (app,)).fetchone()
        if row is not None and row["revision"] == revision:
            return False
        self.db.execute("INSERT INTO conditions (app, condition, since, revision) VALUES (?, 'ok', ?, ?)"
                        " ON CONFLICT (app) DO UPDATE SET revision = excluded.revision", (app, now(), revision))
        return True

    def suspend(self, app: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?)", (app, now(), reason))

    def resume(self, app: str) -> bool:
        """Lift a suspension; False when the app was not suspended."""
        return self.db.execute("DELETE FROM suspensions WHERE app = ?", (app,)).rowcount > 0

    def set_condition(self, app: str, condition: str) -> None:
        """Remember what was last announced for ``app``, so the same state is not announced twice."""
        self.db.execute("INSERT INTO conditions (app, condition, since) VALUES (?, ?, ?) ON CONFLICT (app)"
                        " DO UPDATE SET condition = excluded.condition, since = excluded.since",
                        (app, condition, now()))

    # -- reading -------------------------------------------------------------
    def suspensions(self) -> dict[str, dict[str, str]]:
        """Suspended apps, with since when and why."""
        return {r["app"]: {"since": r["since"], "reason": r["reason"]}
                for r in self.db.execute("SELECT * FROM suspensions ORDER BY app")}

    def condition(self, app: str) -> str | None:
        row = self.db.execute("SELECT condition FROM conditions WHERE app = ?", (app,)).fetchone()
        return row["condition"] if row else None

    def last_applied(self, app: str) -> str | None:
        """The revision last applied successfully to any host of the app (the newest such apply)."""
        row = self.db.execute("SELECT revision FROM hosts WHERE app = ? AND revision IS NOT NULL"
                              " ORDER BY applied_at DESC, run_id DESC LIMIT 1", (app,)).fetchone()
        return row["revision"] if row else None

    def hosts(self, app: str) -> list[dict[str, Any]]:
        """Every host of the app: its applied revision and when, its state and since when."""
        return [dict(r) for r in self.db.execute(
            "SELECT host, revision, applied_at, state, since, run_id FROM hosts WHERE app = ? ORDER BY host",
            (app,))]

    def manifests(self, app: str) -> dict[str, Manifest | None]:
        """The hosts of the app's last full runs and their manifests (None: not found in sync)."""
        return {r["host"]: Manifest.from_json(r["body"]) if r["body"] else None
                for r in self.db.execute("SELECT host, body FROM manifests WHERE app = ?", (app,))}

    def runs(self, app: str | None = None, limit: int = 20, *, outcome: str | None = None,
             trigger: str | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Runs newest first, optionally of one app, outcome (``running``: not finished) and trigger."""
        where, values = self._run_filter(app, outcome, trigger)
        rows = self.db.execute(f"SELECT * FROM runs{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                               (*values, limit, offset))
        return [self._run(row) for row in rows]

    def count_runs(self, app: str | None = None, *, outcome: str | None = None, trigger: str | None = None) -> int:
        """How many runs ``runs`` would page through with the same filters."""
        where, values = self._run_filter(app, outcome, trigger)
        return int(self.db.execute(f"SELECT COUNT(*) FROM runs{where}", values).fetchone()[0])

    @staticmethod
    def _run_filter(app: str | None, outcome: str | None, trigger: str | None) -> tuple[str, tuple[str, ...]]:
        clauses, values = [], []
        for column, value in (("app", app), ("outcome", outcome), ("trigger", trigger)):
            if value == "running" and column == "outcome":
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
            " (SELECT MAX(run_id) FROM hosts), (SELECT group_concat(app || since) FROM suspensions)").fetchone()
        return ":".join(str(value) for value in row)

    def run(self, run_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        run = self._run(row)
        for table in ("host_results", "task_results"):
            rows = self.db.execute(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY rowid", (run_id,))
            run[table.split("_")[0] + "s"] = [
                {k: v for k, v in dict(r).items() if k not in ("run_id", "id")} for r in rows]
        return run

    def apps(self) -> list[str]:
        """Apps reconciled here (previews do not count) and not retired from gitops.yml."""
        # one index lookup per app rather than a scan of every run: each step finds the next name after the last
        return [r["app"] for r in self.db.execute(
            "WITH RECURSIVE named(app) AS (SELECT MIN(app) FROM runs"
            " UNION ALL SELECT (SELECT MIN(app) FROM runs WHERE app > named.app) FROM named WHERE app IS NOT NULL)"
            " SELECT app FROM named WHERE app IS NOT NULL AND app != '*' AND app NOT IN (SELECT app FROM retired)"
            " AND EXISTS (SELECT 1 FROM runs WHERE runs.app = named.app AND mode != ?) ORDER BY app",
            (Kind.PREVIEW.value,))]

    def latest(self, app: str, *kinds: Kind, full: bool = False) -> dict[str, Any] | None:
        """The app's newest run of one of ``kinds`` (checks and syncs when none is given); ``full``: only
        a run that fully checked every host (the drift schedule's clock)."""
        wanted = [k.value for k in kinds] or [Kind.CHECK.value, Kind.SYNC.value]
        row = self.db.execute(f"SELECT * FROM runs WHERE app = ? AND mode IN ({','.join('?' * len(wanted))})"
                              + (" AND verified = 0" if full else "") + " ORDER BY id DESC LIMIT 1",
                              (app, *wanted)).fetchone()
        return self._run(row) if row else None

    def previous_run(self, app: str, run_id: int) -> dict[str, Any] | None:
        """The app's check or sync just before run ``run_id`` (what a forge was last told about it)."""
        row = self.db.execute("SELECT * FROM runs WHERE app = ? AND id < ? AND mode IN (?, ?) ORDER BY id DESC LIMIT 1",
                              (app, run_id, Kind.CHECK.value, Kind.SYNC.value)).fetchone()
        return self._run(row) if row else None

    def status(self) -> list[dict[str, Any]]:
        """Per app: its applied revision and hosts at it, its state, and the newest failure if it is newer."""
        rows = []
        suspended = self.suspensions()
        for app in self.apps():
            latest = self.latest(app)
            assert latest is not None
            good = self._latest_good(app) or latest
            failure = latest if latest["outcome"] in (Outcome.FAILED, Outcome.INTERRUPTED) else None
            hosts = self.hosts(app)
            revision = self.last_applied(app)
            rows.append({
                "app": app,
                "policy": good["policy"],  # as gitops.yml said then (None: not read by that run)
                "suspended": app in suspended,
                "applied_revision": revision,
                "hosts_at_revision": sum(1 for h in hosts if revision and h["revision"] == revision),
                "hosts_total": len(hosts),
                "state": good["outcome"] or "running",
                "reason": good["reason"],
                "detail": good["message"],
                "last_run": latest["started"],
                "last_run_id": latest["id"],
                "failure": None if failure is None or good is failure else {
                    "revision": failure["revision"], "outcome": failure["outcome"], "reason": failure["reason"],
                    "message": failure["message"], "run_id": failure["id"], "started": failure["started"]},
                "hosts": hosts,
            })
        return rows

    def _latest_good(self, app: str) -> dict[str, Any] | None:
        """The newest check or sync that did not fail outright: what the hosts are known to look like."""
        row = self.db.execute(
            "SELECT * FROM runs WHERE app = ? AND mode != ? AND outcome IS NOT NULL AND outcome NOT IN (?, ?)"
            " ORDER BY id DESC LIMIT 1",
            (app, Kind.PREVIEW.value, Outcome.FAILED.value, Outcome.INTERRUPTED.value)).fetchone()
        return self._run(row) if row else None

    def run_tallies(self) -> list[dict[str, Any]]:
        """Finished checks, syncs and verifies of apps not retired, per app, kind and outcome: how many, their
        seconds in all, how many took at most each of DURATION_BUCKETS, and when the last ended (for /metrics)."""
        return [{**{k: row[k] for k in ("app", "mode", "outcome", "runs", "seconds", "last_finished")},
                 "buckets": [row[c] for c in _BUCKET_COLUMNS]} for row in self.db.execute(
            "SELECT * FROM run_tallies WHERE app NOT IN (SELECT app FROM retired) ORDER BY app, mode, outcome")]

    def revision(self, sha: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM revisions WHERE sha = ?", (sha,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def _run(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["applied"] = bool(run["applied"])
        run["summary"] = json.loads(run["summary"])
        return run
