"""The SQL database under the state store: a SQLite file (the default) or a PostgreSQL server (``state.url``).

The store writes one SQL, SQLite's: ``?`` placeholders and statements both engines run the same way. The
PostgreSQL side binds on the client (as SQLite does, a ``?`` that is NULL needs no type), turns ``?`` into
``%s`` and reads the migrations' PostgreSQL text where SQLite's differs (migrations.POSTGRES). Writers take
turns: SQLite's ``BEGIN IMMEDIATE``, or a transaction-scoped advisory lock on PostgreSQL. Either driver's
errors come out as StoreError. psycopg is imported only when a PostgreSQL store is opened.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from controller.errors import ControllerError
from controller.vocabulary import Reason

# the controller's advisory locks are (NAMESPACE, kind): a namespace the database's other users do not take; kind
# WRITE is the one writers take turns on (a transaction's, released as it ends), locks.py holds the others
NAMESPACE = 0x67_69_74_6F  # "gito"
WRITE = 0


class StoreError(ControllerError):
    """The database could not run a statement (locked too long, a disk full, the server gone): either driver's
    operational error, its message kept. A statement it refuses (a bug) keeps its driver's error."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(Reason.STORE_UNAVAILABLE, f"state store {where}: {message}")


class Rows(Protocol):
    """What a statement returns: its rows, read by column name or position."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database:
    """A connection to the store's database; ``execute`` takes SQLite's SQL whatever the engine."""

    engine = "sqlite"
    # the column that orders host_results as they were recorded (PostgreSQL has no rowid: migrations.POSTGRES
    # gives it a ``seq``)
    recorded_order = "rowid"

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self.connection = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"state store {path}: {exc}") from exc

    errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)  # what a file that is no store raises

    def execute(self, sql: str, values: Sequence[object] = ()) -> Rows:
        try:
            return self.connection.execute(sql, values)
        except sqlite3.OperationalError as exc:
            raise StoreError(self.where, str(exc)) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        try:
            self.connection.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            raise StoreError(self.where, str(exc)) from exc

    def insert(self, sql: str, values: Sequence[object]) -> int:
        """Run an INSERT into a table with an ``id``; the id it gave the row."""
        try:
            return int(self.connection.execute(sql, values).lastrowid or 0)
        except sqlite3.OperationalError as exc:
            raise StoreError(self.where, str(exc)) from exc

    def script(self, sql: str) -> None:
        """Run a migration's statements (inside the caller's transaction)."""
        from controller.state.migrations import statements
        for statement in statements(sql):
            self.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One writer at a time; rolled back on any exception, interruptions included."""
        first, *rest = self.begin
        self.execute(first)
        try:
            for statement in rest:  # the writers' turn: taken inside the transaction, rolled back with it
                self.execute(statement)
            yield self
        except BaseException:
            with suppress(StoreError):  # the error that broke the transaction is the one to tell
                self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    begin: tuple[str, ...] = ("BEGIN IMMEDIATE",)

    def version(self) -> int:
        """The schema version: how many migrations the store has had."""
        return int(self.execute("PRAGMA user_version").fetchone()[0])

    def set_version(self, version: int) -> None:
        self.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        self.connection.close()


class PostgresDatabase(Database):
    """The store on a PostgreSQL server (psycopg 3); ``url`` as libpq takes it (a password in it or in
    ~/.pgpass, PGPASSFILE)."""

    engine = "postgresql"
    recorded_order = "seq"
    begin = ("BEGIN", f"SELECT pg_advisory_xact_lock({NAMESPACE}, {WRITE})")

    def __init__(self, url: str, *, holds_locks: bool = False) -> None:  # another driver: no Database.__init__
        """Connect; ``holds_locks``: a connection that holds an advisory lock for long, whose end both sides
        must notice within seconds (TCP keepalives)."""
        try:
            import psycopg
        except ImportError:
            raise ControllerError(Reason.CONFIG_INVALID, "state.url: a PostgreSQL store needs psycopg, which is not "
                                  "installed: pip install 'psycopg[binary]>=3.1' into the controller's venv") from None
        self.where = masked(url)
        self.operational: type[Exception] = psycopg.OperationalError
        self.errors = (psycopg.Error,)
        # either side notices a peer gone for good (a power cut, a partition) within about 25 s, not hours
        lasting: dict[str, Any] = {
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
        } if holds_locks else {}
        try:
            self.pg = psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor,
                                      row_factory=_row_maker, connect_timeout=10,
                                      application_name=_application_name(sys.argv), **lasting)
        except psycopg.Error as exc:
            raise StoreError(self.where, _first_line(exc, url)) from None

    def execute(self, sql: str, values: Sequence[object] = ()) -> Rows:
        try:
            if not values:  # no parameters: psycopg reads the SQL as written, % and all
                return self.pg.execute(sql.encode())
            return self.pg.execute(_placeholders(sql), [_value(v) for v in values])
        except self.operational as exc:
            raise StoreError(self.where, _first_line(exc, "")) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        try:
            with self.pg.cursor() as cursor:
                cursor.executemany(_placeholders(sql), [[_value(v) for v in row] for row in rows])
        except self.operational as exc:
            raise StoreError(self.where, _first_line(exc, "")) from exc

    def insert(self, sql: str, values: Sequence[object]) -> int:
        return int(self.execute(f"{sql} RETURNING id", values).fetchone()[0])

    def script(self, sql: str) -> None:
        self.execute(sql)  # all its statements at once: a function's body keeps its semicolons

    def version(self) -> int:
        # pg_tables, not to_regclass: a scan sees what committed before this statement, where the catalog cache
        # of a session that just waited for the write lock may still miss the table another one created
        if self.execute("SELECT 1 FROM pg_tables WHERE schemaname = current_schema()"
                        " AND tablename = 'schema_version'").fetchone() is None:
            return 0  # a new database: the table comes with the first migration's transaction
        return int(self.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)

    def set_version(self, version: int) -> None:
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        self.execute("DELETE FROM schema_version")
        self.execute("INSERT INTO schema_version VALUES (?)", (version,))

    def close(self) -> None:
        self.pg.close()


def open_database(path: Path, url: str | None) -> Database:
    """The database of a store: PostgreSQL at ``url`` when one is configured, else the SQLite file ``path``."""
    return PostgresDatabase(url) if url else Database(path)


def masked(url: str) -> str:
    """``url`` as it may be shown: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class Row(tuple[Any, ...]):
    """A PostgreSQL row read as sqlite3.Row reads: by column name or by position."""

    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self.names[key] if isinstance(key, str) else key)


def _row_maker(cursor: Any) -> Any:
    names = {column.name: number for number, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row.names = names
        return row
    return make


def _application_name(argv: Sequence[str]) -> str:
    """How a connection names itself to the server (pg_stat_activity, who holds a lock): bastion, pid, command
    (the server keeps 63 bytes: the host name is what gets cut)."""
    words = [word for before, word in zip(["", *argv[1:]], argv[1:], strict=False)
             if not word.startswith("-") and before != "--config"]
    said = f" pid {os.getpid()}: controller {words[0] if words else ''}".rstrip()
    return socket.gethostname()[:63 - len(said)] + said


def _placeholders(sql: str) -> str:
    # the store's SQL has no ? nor % inside its literals
    return sql.replace("%", "%%").replace("?", "%s")


def _value(value: object) -> object:
    if isinstance(value, bool):  # the schema's flags are integers, as in SQLite
        return int(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str) and "\x00" in value:  # PostgreSQL's text refuses NUL, which SQLite keeps
        return value.replace("\x00", "\ufffd")
    return value


def _first_line(error: Exception, url: str) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    parts = urlsplit(url) if url else None
    return text.replace(parts.password, "***") if parts and parts.password else text
