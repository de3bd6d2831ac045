"""Time as the controller writes and reads it: UTC, ISO 8601 to the second, in the store, the output and the JSON."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """The current UTC time as stored and shown."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_time(stored: str) -> datetime:
    """A timestamp as the state store writes it."""
    return datetime.fromisoformat(stored)
