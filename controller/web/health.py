"""The one health report of a listening process: `GET /healthz` of `controller watch` and `controller serve`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DaemonHealth:
    """What /healthz answers, for `watch` and `serve` alike; written by the process's loop (or, for what is
    running, read from ``running_now``), read by the listener's threads."""

    started: float = field(default_factory=time.time)
    cycles: int = 0
    running: str | None = None
    last_success: float | None = None
    last_failure: str | None = None
    stopping: bool = False
    running_now: Callable[[], str | None] | None = None  # serve: what its dashboard is running, asked at each call
    role: str | None = None  # watch on a PostgreSQL store two bastions share: leader or standby
    leader: str | None = None  # standing by: who leads, as its connection names itself

    def report(self) -> tuple[int, dict[str, Any]]:
        age = None if self.last_success is None else round(time.time() - self.last_success, 1)
        return (503 if self.stopping else 200), {
            "status": "stopping" if self.stopping else "ok",
            "uptime_seconds": round(time.time() - self.started, 1),
            "cycles": self.cycles,
            "running": self.running_now() if self.running_now else self.running,
            "last_success_age_seconds": age,
            "last_failure": self.last_failure,
            "role": self.role,
            "leader": self.leader,
        }
