"""Good news that costs a process to learn and stays true for the same inputs, remembered in the state dir.

Only passes are remembered (mitogen loads with these versions; these inputs passed the syntax
check): a failure is learnt afresh every time, so a fix is seen at once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from controller.config import Config

KEEP = 64  # per kind; the most recently used stay


def known(config: Config, kind: str, key: str) -> bool:
    """Whether ``key`` passed before, in this state dir."""
    marker = config.state_path / "cache" / kind / _name(key)
    try:
        os.utime(marker)  # most recently used: kept longest
    except FileNotFoundError:
        return False
    return True


def remember(config: Config, kind: str, key: str) -> None:
    """Record that ``key`` passed; the least recently used markers beyond KEEP go."""
    directory = config.state_path / "cache" / kind
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / _name(key)).touch()
    markers = sorted(directory.iterdir(), key=_used, reverse=True)
    for old in markers[KEEP:]:
        old.unlink(missing_ok=True)


def _used(marker: Path) -> int:
    try:
        return marker.stat().st_mtime_ns
    except FileNotFoundError:  # another app's run, at once, let it go
        return 0


def _name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
