"""Maintenance windows (gitops.yml ``windows:``): whether a sync may apply an app now. Inside a deny window, or
outside every allow window when the app declares one, its applies are held: checks, verifies and health checks go
on and drift is reported, never corrected (with ``heal: always``, drift at the revision already applied is)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim

from controller.source.apps import Window

LOCALTIME = Path("/etc/localtime")
CHAINED = 50  # windows that follow one another: the hold lasts until the last ends (bounded, for a cron of "* * * * *")


@dataclass(frozen=True)
class Closed:
    """Applies are held now: by which window, and until when (the end of the last window the hold runs into)."""

    window: Window
    until: datetime
    asked: datetime  # when: the hold is told relative to it ("17:00" that day, a date another day)

    def __str__(self) -> str:
        where = "by window" if self.window.deny is not None else "outside allow window"
        return f"held {where} {self.window} until {_when(self.until, self.window, self.asked)}"


def closed(windows: Sequence[Window], now: datetime) -> Closed | None:
    """Whether ``windows`` hold applies at ``now`` (aware), and until when; None: applies may run."""
    first = held = _holding(windows, now)
    for _ in range(CHAINED):
        if held is None or (after := _holding(windows, held.until)) is None:
            break
        held = after
    return None if first is None or held is None else Closed(first.window, held.until, now)


def _holding(windows: Sequence[Window], at: datetime) -> Closed | None:
    denies = [Closed(w, end, at) for w in windows if w.deny is not None and (end := _open_until(w, at))]
    if denies:
        return max(denies, key=lambda c: c.until)
    allows = [w for w in windows if w.allow is not None]
    if not allows or any(_open_until(w, at) for w in allows):
        return None
    return min((Closed(w, next(CronSim(w.cron, at.astimezone(_zone(w)))).astimezone(UTC), at) for w in allows),
               key=lambda c: c.until)


def _open_until(window: Window, at: datetime) -> datetime | None:
    """When the window that is open at ``at`` closes; None when it is not open."""
    # the latest start at or before ``at``: counted back from a minute later, since cronsim's versions differ on
    # whether the instant it starts from (and its seconds) can be the first answer
    local = at.astimezone(_zone(window))
    start = next(s for s in CronSim(window.cron, local + timedelta(minutes=1), reverse=True) if s <= local)
    end = start.astimezone(UTC) + timedelta(seconds=window.duration or 0)
    return end if end > at else None


def _zone(window: Window) -> tzinfo:
    """The window's time zone, or the bastion's: TZ if set, else /etc/localtime, else UTC."""
    if window.timezone:
        return ZoneInfo(window.timezone)
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with LOCALTIME.open("rb") as local:
            return ZoneInfo.from_file(local)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def _when(moment: datetime, window: Window, asked: datetime) -> str:
    """``17:00`` the day ``asked`` is in the window's time zone, ``2026-12-07 09:00`` another day."""
    zone = _zone(window)
    local, today = moment.astimezone(zone), asked.astimezone(zone).date()
    shown = local.strftime("%H:%M" if local.date() == today else "%Y-%m-%d %H:%M")
    return f"{shown} {window.timezone}" if window.timezone else shown
