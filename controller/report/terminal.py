"""Live progress on stderr: each step, the task results worth seeing, and a heartbeat while Ansible is quiet.

On a terminal the heartbeat is one status line rewritten in place (elapsed time, then per app under way its
phase, the task under way and how many of its hosts have answered), and results are coloured; the report
printed at the end holds the details, so a plain ok result is never a line of its own unless -v asks for every
one. Into a pipe or a file (cron, CI, a log) the heartbeat is a whole line every 15 s of silence, without
colour.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from controller.ansible.results import TaskResult
from controller.report.colour import DIM, STATUS, Paint, wanted
from controller.vocabulary import TaskStatus

TTY_QUIET = 1.0   # seconds of silence before a terminal's status line appears
PIPE_QUIET = 15.0  # seconds of silence between heartbeat lines in a log
TICK = 0.5


@dataclass
class Activity:
    """An app's task under way: its name, the hosts it started on and the hosts that answered."""

    phase: str
    task: str
    started: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)


def elapsed(seconds: float) -> str:
    """``7s``, ``1m05s``, ``1h02m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class TerminalProgress:
    """Progress for one command; ``enabled`` False says only notices (``verbose``: every task result)."""

    def __init__(self, enabled: bool, verbose: bool, stream: TextIO) -> None:
        self.enabled = enabled or verbose
        self.verbose = verbose
        self.stream = stream
        self.tty = stream.isatty()
        self.paint = Paint(wanted(stream))
        self.begun = time.monotonic()
        self.quiet_since = self.begun
        self.activities: dict[str, Activity] = {}  # per app: apps may run at once (ansible.parallel_apps)
        self.notices: list[str] = []  # also said in a preview's review comment
        self.status_shown = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        if self.enabled:
            self.beat.start()

    def step(self, message: str) -> None:
        with self.lock:
            # what ran before the step is over; with apps at once (the step may be another app's), only the tasks
            # every host answered are: an app's task under way stays on the line
            self.activities = {app: doing for app, doing in self.activities.items()
                               if len(self.activities) > 1 and not doing.started <= doing.answered}
        if self.enabled:
            self._line(f"==> {message}")

    def started(self, app: str, phase: str, task: str, host: str) -> None:
        with self.lock:
            doing = self.activities.get(app)
            if doing is None or (doing.phase, doing.task) != (phase, task):
                doing = self.activities[app] = Activity(phase, task)
            doing.started.add(host)

    def task(self, app: str, phase: str, result: TaskResult) -> None:
        with self.lock:
            doing = self.activities.get(app)
            if doing is not None and doing.task == result.task:
                doing.answered.add(result.host)
        if not self.enabled or not (self.verbose or result.status is not TaskStatus.OK):
            return
        if self.tty and not self.verbose and result.status in (TaskStatus.CHANGED, TaskStatus.SKIPPED):
            return  # on a terminal the report at the end shows each change with its diff: not twice
        status = self.paint(str(result.status), STATUS.get(result.status))
        self._line(f"    [{app} {phase}] {result.host}: {status}  {result.task}")

    def notice(self, message: str) -> None:
        self.notices.append(message)
        self._line(f"controller: note: {message}")

    def close(self) -> None:
        """Stop the heartbeat and take its status line off the terminal, before the report is printed."""
        self.done.set()
        with self.lock:
            self._clear()

    def _line(self, text: str) -> None:
        with self.lock:
            self._clear()
            self.stream.write(text + "\n")
            self.stream.flush()
            self.quiet_since = time.monotonic()

    def _clear(self) -> None:
        if self.status_shown:
            self.stream.write("\r\033[K")
            self.status_shown = False

    def _heartbeat(self) -> None:
        while not self.done.wait(TICK):
            with self.lock:
                if self.done.is_set():  # closed while this waited for the lock: the stream may be gone
                    return
                now = time.monotonic()
                if now - self.quiet_since < (TTY_QUIET if self.tty else PIPE_QUIET):
                    continue
                text = self._status(now)
                if self.tty:
                    # one screen row: \r\033[K clears only the row the cursor is on, so a wrapped line would pile up
                    self.stream.write("\r\033[K" + self.paint(text[:self._columns() - 1], DIM))
                    self.status_shown = True
                else:
                    self.stream.write(text + "\n")
                    self.quiet_since = now
                self.stream.flush()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError):
            return 80

    def _status(self, now: float) -> str:
        under_way = "; ".join(f"[{app} {doing.phase}] {doing.task}: {len(doing.answered)}/{len(doing.started)} "
                              "host(s) answered" for app, doing in self.activities.items())
        return f"... {elapsed(now - self.begun)}" + (f"  {under_way}" if under_way else "")
