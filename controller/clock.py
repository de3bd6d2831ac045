"""Time as the controller writes and reads it: UTC, ISO 8601 to the second, in the store, the output and the JSON."""

from __future__ import annotations

from datetime import UTC, datetime

UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def now() -> str:
    """The current UTC time as stored and shown."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_time(stored: str) -> datetime:
    """A timestamp as the state store writes it."""
    return datetime.fromisoformat(stored)


def ago(stamp: str, now: datetime | None = None) -> str:
    """A stored time as tables show it, ``42s ago``, ``5m ago``, ``3h ago``, ``2d ago`` (JSON keeps ISO 8601)."""
    seconds = int(((now or datetime.now(UTC)) - parse_time(stamp)).total_seconds())
    if seconds < 1:
        return "just now"  # or a clock a little ahead of this one
    size, unit = next((size, unit) for size, unit in UNITS if seconds >= size)
    return f"{seconds // size}{unit} ago"
