"""When an app's next drift check is due: every N seconds, or on a cron expression."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from controller.config import WatchConfig


@dataclass(frozen=True)
class DriftSchedule:
    """Scheduled drift checks; ``None`` from ``next_check`` means they are off."""

    interval: float
    cron: str | None = None

    @classmethod
    def of(cls, watch: WatchConfig) -> DriftSchedule:
        return cls(watch.drift_check_interval, watch.drift_check_cron)

    def next_check(self, last: datetime | None) -> datetime | None:
        """When the check after one that started at ``last`` is due (at once if never checked)."""
        if last is None:
            return datetime.now(UTC)
        if self.cron:
            return next(CronSim(self.cron, last))
        if self.interval <= 0:
            return None
        return last + timedelta(seconds=self.interval)

    def due(self, last: datetime | None, now: datetime) -> bool:
        when = self.next_check(last)
        return when is not None and when <= now
