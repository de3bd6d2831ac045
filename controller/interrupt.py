"""SIGTERM and Ctrl-C: stop the playbook that is running, then unwind so cleanup runs."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from controller.errors import Interrupted


class Cancel:
    """A cancellation flag; ansible-runner polls it while a playbook runs."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._deferring = 0  # playbooks running now (apps at once: several)
        self._lock = threading.Lock()
        self._pushed = False  # the daemon saw the branch move while a cycle ran
        self._newer: str | None = None  # to this revision, when the push said

    def __call__(self) -> bool:
        return self.event.is_set()

    def supersede(self, sha: str | None) -> None:
        """The branch moved (to ``sha``, when known) while a cycle ran: its checks are stale from now on."""
        with self._lock:
            self._pushed, self._newer = True, sha

    def superseded(self, sha: str) -> str | None:
        """What makes work at revision ``sha`` stale (the newer revision, shortened), or None."""
        with self._lock:
            pushed, newer = self._pushed, self._newer
        if not pushed or newer == sha:
            return None
        return newer[:12] if newer else "a newer push"

    def renew(self) -> None:
        """A cycle that fetches starts: it gets whatever was pushed before."""
        with self._lock:
            self._pushed, self._newer = False, None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, a signal only sets the flag: ansible-runner then stops its child itself."""
        with self._lock:
            self._deferring += 1
        try:
            yield
        finally:
            with self._lock:
                self._deferring -= 1

    def request(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: set the flag, and raise at once unless a playbook is running.

        Only the first signal raises: a second Ctrl-C must not cut the unwinding (recording, wiping) short.
        """
        first = not self.event.is_set()
        self.event.set()
        if first and not self._deferring:
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    def install(self) -> None:
        """Route SIGTERM and SIGINT here (main thread only)."""
        signal.signal(signal.SIGTERM, self.request)
        signal.signal(signal.SIGINT, self.request)
