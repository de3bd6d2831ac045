"""Colour for a terminal: statuses, outcomes and diff lines; never when the stream is not a terminal, NO_COLOR
is set (https://no-color.org) or TERM is dumb."""

from __future__ import annotations

import os
from typing import TextIO

from controller.vocabulary import Outcome, TaskStatus

RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN, DIM = "31", "32", "33", "34", "35", "36", "2"

STATUS = {TaskStatus.CHANGED: YELLOW, TaskStatus.FAILED: RED, TaskStatus.UNREACHABLE: RED,
          TaskStatus.UNVERIFIED: MAGENTA, TaskStatus.SKIPPED: DIM, TaskStatus.OK: GREEN}
OUTCOME = {Outcome.CONVERGED: GREEN, Outcome.IN_SYNC: GREEN, Outcome.DRIFTED: YELLOW, Outcome.UNVERIFIED: MAGENTA,
           Outcome.PARTIAL: RED, Outcome.FAILED: RED, Outcome.INTERRUPTED: RED, Outcome.SUSPENDED: BLUE}


def wanted(stream: TextIO) -> bool:
    """Whether to colour what goes to ``stream``."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"


class Paint:
    """Wraps text in SGR colours, or leaves it alone when colour is off."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, colour: str | None) -> str:
        return f"\033[{colour}m{text}\033[0m" if self.on and colour and text else text

    def diff(self, line: str) -> str:
        """A unified diff line: additions green, removals red, hunk headers cyan."""
        if line.startswith(("+++", "---")):
            return self(line, DIM)
        if line.startswith("+"):
            return self(line, GREEN)
        if line.startswith("-"):
            return self(line, RED)
        return self(line, CYAN) if line.startswith("@@") else line
