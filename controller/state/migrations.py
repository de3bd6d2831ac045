"""The state store's schema: numbered migrations, applied in order when a store is opened."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from controller.errors import ControllerError
from controller.vocabulary import Reason

if TYPE_CHECKING:
    from controller.state.database import Database

# The upper bounds (seconds) of the run-duration histogram that run_tallies keeps (migration 5): a contract.
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
BUCKET_COLUMNS = tuple(f"le{b}".replace(".", "_") for b in DURATION_BUCKETS)

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
        last_finished TEXT NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in BUCKET_COLUMNS)},
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
            {", ".join(f"{c} = {c} + excluded.{c}" for c in BUCKET_COLUMNS)};
    END;
    """,
    # 6: per app, how many hosts syncs rolled a new revision out to and how many had their drift corrected (the
    # run's summary says which, since this release), kept as runs finish like run_tallies. Older runs told the two
    # apart nowhere, so they count to neither: the counters start at this migration.
    """
    CREATE TABLE host_changes (
        app TEXT PRIMARY KEY, rolled_out INTEGER NOT NULL, corrected INTEGER NOT NULL);
    CREATE TRIGGER runs_host_changes AFTER UPDATE OF outcome ON runs
        WHEN OLD.outcome IS NULL AND NEW.outcome IS NOT NULL AND NEW.mode = 'sync'
            AND json_type(NEW.summary, '$.rolled_out') = 'array'
    BEGIN
        INSERT INTO host_changes VALUES (NEW.app, json_array_length(NEW.summary, '$.rolled_out'),
                                         json_array_length(NEW.summary, '$.corrected'))
        ON CONFLICT (app) DO UPDATE SET rolled_out = rolled_out + excluded.rolled_out,
                                        corrected = corrected + excluded.corrected;
    END;
    """,
    # Each task result of a running run as it arrives (host, task, status: no diff, no message), so that the
    # dashboard follows it task by task; dropped when the run finishes, whose reports then hold everything.
    """
    CREATE TABLE live_tasks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs (id),
        phase TEXT NOT NULL, host TEXT NOT NULL, task TEXT NOT NULL, status TEXT NOT NULL, at TEXT NOT NULL);
    CREATE INDEX live_tasks_run ON live_tasks (run_id, seq);
    """,
    # 8: each host's health (gitops.yml ``health:``): the last known (a host that could not be asked keeps it),
    # since when, and what the failed checks said (NULL: the app declares no health check)
    """
    ALTER TABLE hosts ADD COLUMN health TEXT;
    ALTER TABLE hosts ADD COLUMN health_since TEXT;
    ALTER TABLE hosts ADD COLUMN health_detail TEXT NOT NULL DEFAULT '';
    """,
    # 9: revisions a rollout in batches halted (a batch failed its apply or its health checks), per app: not applied
    # again until the branch moves or a sync is forced; forgotten when a later rollout of the app completes
    """
    CREATE TABLE halts (
        app TEXT NOT NULL, revision TEXT NOT NULL, run_id INTEGER NOT NULL, since TEXT NOT NULL,
        last_good TEXT, detail TEXT NOT NULL, PRIMARY KEY (app, revision));
    """,
    # 10: a running rollout in batches as it stands (which batch, which hosts applied, healthy, failed, rolled
    # back), so that the dashboard follows it batch by batch; dropped when the run finishes, as live_tasks
    """
    CREATE TABLE live_rollouts (
        run_id INTEGER PRIMARY KEY REFERENCES runs (id), rollout TEXT NOT NULL, changes INTEGER NOT NULL);
    """,
    # 11: approvals (gitops.yml ``approval: required``): who let a sync apply which revision of an app, when, why;
    # and the apps whose last applied revision required them (so that a commit dropping the key needs one too)
    """
    CREATE TABLE approvals (
        app TEXT NOT NULL, revision TEXT NOT NULL, who TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (app, revision));
    CREATE TABLE approval_required (app TEXT PRIMARY KEY, since TEXT NOT NULL);
    """,
    # 12: pins (`controller rollback`): the revision an app was put back to, the branch head it was rolled back from
    # (held until the branch moves), the rollback's run, who, when and why; and the audit trail: what people did to
    # apps (vocabulary.Act), who, when, why, at which revision, and the run it started when it started one
    """
    CREATE TABLE pins (
        app TEXT PRIMARY KEY, revision TEXT NOT NULL, rolled_back_from TEXT NOT NULL,
        run_id INTEGER NOT NULL REFERENCES runs (id), by TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, who TEXT NOT NULL, act TEXT NOT NULL,
        app TEXT NOT NULL, revision TEXT, reason TEXT NOT NULL, run_id INTEGER REFERENCES runs (id));
    CREATE INDEX audit_app ON audit (app, id);
    CREATE INDEX audit_run ON audit (run_id);
    """,
    # 13: retention (controller/state/retention.py). A run the same as the app's run before it, which it found
    # unremarkable, takes that run's place: ``folded`` counts the runs it stands for, ``first_started`` is when the
    # first of them started. ``kept`` marks what retention never prunes (an apply, a failure, a diff, a state
    # change); every run recorded before this release is kept.
    """
    ALTER TABLE runs ADD COLUMN folded INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE runs ADD COLUMN first_started TEXT;
    ALTER TABLE runs ADD COLUMN kept INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX runs_prunable ON runs (kept, id);
    """,
)


def _edited(version: int, *edits: tuple[str, str]) -> str:
    """Migration ``version``'s SQLite text with each of ``edits`` (once each): PostgreSQL's where only words differ."""
    text = MIGRATIONS[version]
    for old, new in edits:
        assert text.count(old) == 1, (version, old)
        text = text.replace(old, new)
    return text


# PostgreSQL's text of the migrations whose SQLite text it does not run as it is: identity columns for
# AUTOINCREMENT (64-bit where rows come by the task result) and host_results' ``seq`` for SQLite's rowid (the
# order results were recorded in), PL/pgSQL functions for triggers, JSON operators, and a quoted ``by``. A
# PostgreSQL store is new with this release: the backfills of older rows (migrations 3 and 5) have nothing to do.
POSTGRES = {
    0: _edited(
        0,
        ("id INTEGER PRIMARY KEY AUTOINCREMENT, app", "id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, app"),
        ("unverified INTEGER NOT NULL,", "unverified INTEGER NOT NULL, seq BIGINT GENERATED ALWAYS AS IDENTITY,"),
        ("id INTEGER PRIMARY KEY AUTOINCREMENT, run_id",
         "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, run_id")),
    2: MIGRATIONS[2][:MIGRATIONS[2].index("    INSERT OR IGNORE")],
    4: f"""
    ALTER TABLE runs ADD COLUMN seconds DOUBLE PRECISION;
    ALTER TABLE runs ADD COLUMN policy TEXT;
    CREATE TABLE run_tallies (
        app TEXT NOT NULL, mode TEXT NOT NULL, outcome TEXT NOT NULL, runs INTEGER NOT NULL,
        seconds DOUBLE PRECISION NOT NULL, last_finished TEXT NOT NULL,
        {", ".join(f"{c} INTEGER NOT NULL" for c in BUCKET_COLUMNS)}, PRIMARY KEY (app, mode, outcome));
    CREATE FUNCTION runs_tally() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO run_tallies VALUES (NEW.app, NEW.mode, NEW.outcome, 1, COALESCE(NEW.seconds, 0),
            COALESCE(NEW.finished, NEW.started),
            {", ".join(f"(COALESCE(NEW.seconds, 0) <= {b})::int" for b in DURATION_BUCKETS)})
        ON CONFLICT (app, mode, outcome) DO UPDATE SET runs = run_tallies.runs + 1,
            seconds = run_tallies.seconds + excluded.seconds,
            last_finished = GREATEST(run_tallies.last_finished, excluded.last_finished),
            {", ".join(f"{c} = run_tallies.{c} + excluded.{c}" for c in BUCKET_COLUMNS)};
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_tally AFTER UPDATE OF outcome ON runs FOR EACH ROW
        WHEN (OLD.outcome IS NULL AND NEW.outcome IS NOT NULL AND NEW.mode != 'preview')
        EXECUTE FUNCTION runs_tally();
    """,
    5: """
    CREATE TABLE host_changes (
        app TEXT PRIMARY KEY, rolled_out INTEGER NOT NULL, corrected INTEGER NOT NULL);
    CREATE FUNCTION runs_host_changes() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO host_changes VALUES (NEW.app, json_array_length(NEW.summary::json -> 'rolled_out'),
                                         json_array_length(NEW.summary::json -> 'corrected'))
        ON CONFLICT (app) DO UPDATE SET rolled_out = host_changes.rolled_out + excluded.rolled_out,
                                        corrected = host_changes.corrected + excluded.corrected;
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_host_changes AFTER UPDATE OF outcome ON runs FOR EACH ROW
        WHEN (OLD.outcome IS NULL AND NEW.outcome IS NOT NULL AND NEW.mode = 'sync'
              AND json_typeof(NEW.summary::json -> 'rolled_out') = 'array')
        EXECUTE FUNCTION runs_host_changes();
    """,
    6: _edited(6, ("seq INTEGER PRIMARY KEY AUTOINCREMENT", "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")),
    11: _edited(11, (" by TEXT", ' "by" TEXT'),
                ("id INTEGER PRIMARY KEY AUTOINCREMENT", "id INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")),
}


def statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration (a trigger's body holds semicolons of its own)."""
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                yield current
            current = ""


def migrate(db: Database) -> None:
    """Bring the store up to the newest schema, one transaction per migration."""
    version = _version(db)
    while version < len(MIGRATIONS):
        with db.transaction():
            # read again under the write lock: another process (watch, a `controller history`) opening the same
            # new store may have migrated it while this one waited for the lock
            version = _version(db)
            if version < len(MIGRATIONS):
                db.script(POSTGRES.get(version, MIGRATIONS[version]) if db.engine == "postgresql"
                          else MIGRATIONS[version])
                version += 1
                db.set_version(version)


def _version(db: Database) -> int:
    version = db.version()
    if version > len(MIGRATIONS):
        raise ControllerError(Reason.CONFIG_INVALID,
                              f"state store {db.where} has schema {version}, newer than this controller "
                              f"knows ({len(MIGRATIONS)}): upgrade the controller, or point the store elsewhere")
    return version
