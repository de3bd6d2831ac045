"""The state store: revisions, runs and their per-host and per-task results, in SQLite (WAL)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.drift import Report
from controller.errors import ControllerError
from controller.outcomes import Outcome, Reason
from controller.source import Revision

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
)


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
        private_directory(path.parent)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if name.exists():
                    name.chmod(0o600)  # whatever the umask: runs hold hostnames, diffs, masked or not
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"state store {path}: {exc}") from exc

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
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    # -- writing -------------------------------------------------------------
    def record_revision(self, revision: Revision) -> None:
        self.db.execute("INSERT OR IGNORE INTO revisions VALUES (?, ?, ?, ?, ?)",
                        (revision.sha, revision.subject, revision.author, revision.committed_at, now()))

    def start_run(self, app: str, revision: str | None, mode: str, trigger: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO runs (app, revision, mode, trigger, started) VALUES (?, ?, ?, ?, ?)",
            (app, revision, mode, trigger, now()))
        return int(cursor.lastrowid or 0)

    def add_report(self, run_id: int, phase: str, report: Report) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO host_results VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, phase, h.host, h.status, h.changed, h.unverified) for h in report.hosts])
            db.executemany(
                "INSERT INTO task_results (run_id, phase, host, task, action, status, diff, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, phase, t.host, t.task, t.action, t.status, t.diff, t.message) for t in report.tasks])

    def finish_run(self, run_id: int, outcome: Outcome, reason: Reason | None, message: str,
                   applied: bool, summary: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE runs SET finished = ?, outcome = ?, reason = ?, message = ?, applied = ?, summary = ?"
            " WHERE id = ?",
            (now(), outcome.value, reason.value if reason else None, message, int(applied),
             json.dumps(summary), run_id))

    def interrupt_unfinished(self) -> int:
        """Mark runs left running by a controller that was killed; only call while holding the lock."""
        return self.db.execute(
            "UPDATE runs SET finished = ?, outcome = ?, reason = ?, message = ? WHERE finished IS NULL",
            (now(), Outcome.INTERRUPTED.value, Reason.INTERRUPTED.value,
             "the controller was killed before this run finished; its workspace was wiped")).rowcount

    def suspend(self, app: str, reason: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?)", (app, now(), reason))

    def resume(self, app: str) -> bool:
        """Lift a suspension; False when the app was not suspended."""
        return self.db.execute("DELETE FROM suspensions WHERE app = ?", (app,)).rowcount > 0

    def set_condition(self, app: str, condition: str) -> None:
        """Remember what was last announced for ``app``, so the same state is not announced twice."""
        self.db.execute("INSERT OR REPLACE INTO conditions VALUES (?, ?, ?)", (app, condition, now()))

    # -- reading -------------------------------------------------------------
    def suspensions(self) -> dict[str, dict[str, str]]:
        """Suspended apps, with since when and why."""
        return {r["app"]: {"since": r["since"], "reason": r["reason"]}
                for r in self.db.execute("SELECT * FROM suspensions ORDER BY app")}

    def condition(self, app: str) -> str | None:
        row = self.db.execute("SELECT condition FROM conditions WHERE app = ?", (app,)).fetchone()
        return row["condition"] if row else None

    def last_applied(self, app: str) -> str | None:
        """The revision of the app's last sync that left every host converged."""
        row = self.db.execute(
            "SELECT revision FROM runs WHERE app = ? AND mode = 'sync' AND outcome IN ('converged', 'in-sync')"
            " ORDER BY id DESC LIMIT 1", (app,)).fetchone()
        return row["revision"] if row else None

    def runs(self, app: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        query = "SELECT * FROM runs" + (" WHERE app = ?" if app else "") + " ORDER BY id DESC LIMIT ?"
        return [self._run(row) for row in self.db.execute(query, (app, limit) if app else (limit,))]

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
        return [r["app"] for r in self.db.execute("SELECT DISTINCT app FROM runs WHERE app != '*' ORDER BY app")]

    def latest(self, app: str, mode: str | None = None) -> dict[str, Any] | None:
        query = "SELECT * FROM runs WHERE app = ?" + (" AND mode = ?" if mode else "") + " ORDER BY id DESC LIMIT 1"
        row = self.db.execute(query, (app, mode) if mode else (app,)).fetchone()
        return self._run(row) if row else None

    def status(self) -> list[dict[str, Any]]:
        """Per app: applied revision, last run, and the state that run left."""
        rows = []
        suspended = self.suspensions()
        for app in self.apps():
            latest = self.latest(app)
            assert latest is not None
            rows.append({
                "app": app,
                "suspended": app in suspended,
                "applied_revision": self.last_applied(app),
                "last_run": latest["started"],
                "last_run_id": latest["id"],
                "state": latest["outcome"] or "running",
                "reason": latest["reason"],
                "detail": latest["message"],
            })
        return rows

    def revision(self, sha: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM revisions WHERE sha = ?", (sha,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def _run(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["applied"] = bool(run["applied"])
        run["summary"] = json.loads(run["summary"])
        return run
