"""The one vocabulary of outcomes, reasons and exit codes, the same everywhere it is shown."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Outcome(StrEnum):
    """How one app's run ended."""

    IN_SYNC = "in-sync"        # the check found nothing to change
    DRIFTED = "drifted"        # drift found and left in place (check, dry run, detect policy)
    CONVERGED = "converged"    # applied, every host converged
    PARTIAL = "partial"        # some hosts converged or were checked, others failed or were unreachable
    FAILED = "failed"          # stopped before anything was applied, or the run itself failed
    INTERRUPTED = "interrupted"  # stopped by a signal, or its controller was killed (found at the next start)
    SUSPENDED = "suspended"    # not reconciled: `controller suspend` (not recorded as a run)


def failure(reason: Reason) -> Outcome:
    """The outcome of a run that raised an error with ``reason``."""
    return Outcome.INTERRUPTED if reason is Reason.INTERRUPTED else Outcome.FAILED


class Reason(StrEnum):
    """Why a run did not simply succeed; declared once, used in output, the store and JSON."""

    CONFIG_INVALID = "ConfigInvalid"
    FETCH_FAILED = "FetchFailed"
    REVISION_NOT_FOUND = "RevisionNotFound"
    HISTORY_REWRITTEN = "HistoryRewritten"
    SNAPSHOT_FAILED = "SnapshotFailed"
    WORKSPACE_UNAVAILABLE = "WorkspaceUnavailable"
    DECRYPTION_FAILED = "DecryptionFailed"
    SYNTAX_CHECK_FAILED = "SyntaxCheckFailed"
    LOCK_BUSY = "LockBusy"
    HOST_UNREACHABLE = "HostUnreachable"
    TASK_FAILED = "TaskFailed"
    RUNNER_FAILED = "RunnerFailed"
    INTERRUPTED = "Interrupted"
    TIMED_OUT = "TimedOut"
    NOT_FOUND = "NotFound"
    VERIFICATION_FAILED = "VerificationFailed"


class ExitCode(IntEnum):
    """Documented, stable exit codes for cron and CI."""

    OK = 0          # check: in sync; sync: converged
    ERROR = 1       # nothing was applied because something was wrong (config, Git, secrets, syntax)
    DRIFT = 2       # check: drift found; sync: drift remains (detect policy, a host failed or was unreachable)
    BUG = 70        # an internal error; the traceback is printed
    LOCKED = 75     # another run holds the lock (EX_TEMPFAIL: try again later)


class Event(StrEnum):
    """What a notification announces: a change in an app's state, never the same state twice."""

    DRIFT_FOUND = "drift-found"
    DRIFT_CORRECTED = "drift-corrected"
    REVISION_APPLIED = "revision-applied"
    RUN_FAILED = "run-failed"
    RECOVERED = "recovered"
    VERIFICATION_FAILED = "verification-failed"


EVENTS = tuple(e.value for e in Event)
