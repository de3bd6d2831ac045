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

from controller.run.plan import Plan
from controller.source.apps import Window
from controller.vocabulary import ApplyReason, Heal

LOCALTIME = Path("/etc/localtime")
CHAINED = 50  # windows that follow one another: the hold lasts until the last ends (bounded, for a cron of "* * * * *")


@dataclass(frozen=True)
class Closed:
    """Applies are held now: by which window, and until when (the end of the last window the hold runs into)."""

    window: Window
    until: datetime

    def __str__(self) -> str:
        where = "by window" if self.window.deny is not None else "outside allow window"
        return f"held {where} {self.window} until {_when(self.until, self.window)}"


def closed(windows: Sequence[Window], now: datetime) -> Closed | None:
    """Whether ``windows`` hold applies at ``now`` (aware), and until when; None: applies may run."""
    first = held = _holding(windows, now)
    for _ in range(CHAINED):
        if held is None or (after := _holding(windows, held.until)) is None:
            break
        held = after
    return None if first is None or held is None else Closed(first.window, held.until)


def within(plan: Plan, shut: Closed, heal: Heal) -> tuple[Plan | None, list[str]]:
    """What of ``plan`` may run while ``shut`` holds applies (drift at the applied revision, with ``heal: always``),
    and the hosts held back."""
    healing = (ApplyReason.DRIFTED, ApplyReason.FAILED_IN_CHECK) if heal is Heal.ALWAYS else ()
    kept = {host: why for host, why in plan.why.items() if why in healing}
    held = sorted(host for host in plan.why if host not in kept)
    return (Plan(kept, every_host=False, left_out=plan.left_out) if kept else None), held


def _holding(windows: Sequence[Window], at: datetime) -> Closed | None:
    denies = [Closed(w, end) for w in windows if w.deny is not None and (end := _open_until(w, at))]
    if denies:
        return max(denies, key=lambda c: c.until)
    allows = [w for w in windows if w.allow is not None]
    if not allows or any(_open_until(w, at) for w in allows):
        return None
    return min((Closed(w, next(CronSim(w.cron, at.astimezone(_zone(w)))).astimezone(UTC)) for w in allows),
               key=lambda c: c.until)


def _open_until(window: Window, at: datetime) -> datetime | None:
    """When the window that is open at ``at`` closes; None when it is not open."""
    # the latest start at or before ``at`` (CronSim's reverse order excludes its starting point)
    start = next(CronSim(window.cron, at.astimezone(_zone(window)) + timedelta(microseconds=1), reverse=True))
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


def _when(moment: datetime, window: Window) -> str:
    """``17:00`` today in the window's time zone, ``2026-12-07 09:00`` another day."""
    zone = _zone(window)
    local, today = moment.astimezone(zone), datetime.now(zone).date()
    shown = local.strftime("%H:%M" if local.date() == today else "%Y-%m-%d %H:%M")
    return f"{shown} {window.timezone}" if window.timezone else shown
