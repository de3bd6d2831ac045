"""The one user-facing error type: a message a person can act on, and its reason."""

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
