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
           Outcome.PARTIAL: RED, Outcome.FAILED: RED, Outcome.INTERRUPTED: RED, Outcome.SUSPENDED: BLUE,
           Outcome.HELD: BLUE}


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
        """A unified diff line: additions green, removals red, file headers dim, hunk headers cyan."""
        return self(line, DIFF.get(diff_kind(line)))


def diff_kind(line: str) -> str:
    """Which part of a unified diff a line is: ``head`` (the files), ``hunk``, ``add``, ``del`` or ``ctx``; a
    terminal colours by it, the dashboard's pages style by it."""
    if line.startswith(("+++", "---")):
        return "head"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "ctx")


DIFF = {"head": DIM, "hunk": CYAN, "add": GREEN, "del": RED}
