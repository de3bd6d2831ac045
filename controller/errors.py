"""The user-facing errors: a message a person can act on, and its reason; and a stop, which is not an error."""

from __future__ import annotations

from controller.vocabulary import Reason


class ControllerError(Exception):
    """An error the CLI prints as one line on stderr; anything else is a bug."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class LockBusy(ControllerError):
    """Another run holds the lock: exit 75 (try again later), or wait for it with --wait."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.LOCK_BUSY, message)


class Interrupted(BaseException):
    """A stop signal (SIGTERM, Ctrl-C). Like KeyboardInterrupt it is no Exception, so an ``except
    ControllerError`` meant for a tool's failure never takes it for one: only the code that records a
    run (and the CLI, the daemon) catches it."""

    reason = Reason.INTERRUPTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Superseded(Interrupted):
    """The daemon saw the branch move while a check ran: the check is stopped, nothing of it is applied, and
    the new head is reconciled next."""

    reason = Reason.SUPERSEDED


Failure = ControllerError | Interrupted
"""Whatever ends a run early, as a run records it: a reason and a message."""
