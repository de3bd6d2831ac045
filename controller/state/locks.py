"""Who may reconcile: one run at a time per store, and one leading ``controller watch``.

With the SQLite file, the turn is a file lock in the state directory (controller/lock.py), and every watch
leads: nothing else shares its store. With a PostgreSQL store that two bastions share, both are advisory locks
of the store's database, each held by a connection of its own: the server lets go of a lock when its holder's
connection ends, so a bastion killed (SIGKILL, a crash) frees them without anyone cleaning up, and one that is
gone for good (a power cut, a partition) within about 25 s (TCP keepalives on both sides).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from controller.config import Config
from controller.errors import ControllerError, LockBusy
from controller.lock import hold
from controller.state.database import NAMESPACE, PostgresDatabase, StoreError

log = logging.getLogger("controller")

RECONCILE, LEADER = 1, 2  # the kinds of advisory lock held here, in database.NAMESPACE
POLL = 0.2  # seconds between tries while waiting for the reconcile lock


@contextmanager
def reconcile_turn(config: Config, wait: float = 0) -> Iterator[None]:
    """Hold the store's reconcile lock, waiting up to ``wait`` seconds for it; LockBusy otherwise."""
    if config.state.url is None:
        with hold(config.state_path / "controller.lock", wait):
            yield
        return
    db = PostgresDatabase(config.state.url, holds_locks=True)
    try:
        deadline = time.monotonic() + wait
        while not _take(db, RECONCILE):
            if time.monotonic() >= deadline:
                raise LockBusy(f"another run holds the reconcile lock of the state store {db.where} "
                               f"({holder(db, RECONCILE) or 'unknown'}); try again, or wait with --wait SECONDS")
            time.sleep(POLL)
        yield
    finally:
        db.close()  # ending the session releases the lock


class Leadership:
    """Whether this watch leads the store's reconciles: always on a SQLite store; on PostgreSQL while a
    connection of its own holds the leader lock. The other watch stands by and asks again at each ``leading``."""

    def __init__(self, config: Config) -> None:
        self.url = config.state.url
        self.db: PostgresDatabase | None = None
        self.held = self.url is None
        self.problem: str | None = None  # why the last ask could not be made (the store unreachable)

    @property
    def shared(self) -> bool:
        """The store is PostgreSQL's: another bastion may lead it."""
        return self.url is not None

    def leading(self) -> bool:
        """Whether this process leads now: the lock taken if free, a lock held checked to be still held (a
        connection that broke has lost it)."""
        if self.url is None:
            return True
        self.problem = None
        try:
            if self.db is None:
                self.db = PostgresDatabase(self.url, holds_locks=True)
            if self.held:
                self.db.execute("SELECT 1")
            else:
                self.held = _take(self.db, LEADER)
                if self.held:
                    log.info("leading: this watch reconciles the store %s", self.db.where)
        except (StoreError, ControllerError) as error:
            if self.held:
                log.error("no longer leading: the leader lock's connection broke (%s)", error)
            self.close()
            self.problem = str(error)
        return self.held

    def leader(self) -> str | None:
        """Who leads, as the leader's connection names itself (None: nobody, or unknown)."""
        if self.db is None:
            return None
        try:
            return holder(self.db, LEADER)
        except StoreError:
            return None

    def close(self) -> None:
        """Let go of the lock (a standby taking over within its next try)."""
        if self.db is not None:
            self.db.close()
        self.db, self.held = None, self.url is None


def _take(db: PostgresDatabase, kind: int) -> bool:
    return bool(db.execute("SELECT pg_try_advisory_lock(?, ?)", (NAMESPACE, kind)).fetchone()[0])


def holder(db: PostgresDatabase, kind: int) -> str | None:
    """The connection holding lock ``kind``, as it named itself (host, pid and command)."""
    row = db.execute("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                     " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ? AND l.objid = ?"
                     " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database"
                     " WHERE datname = current_database())", (NAMESPACE, kind)).fetchone()
    return str(row[0]) if row else None
