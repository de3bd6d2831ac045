"""One reconcile at a time per state directory: cron, a person and the daemon take turns."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from controller.errors import LockBusy


@contextmanager
def hold(path: Path, wait: float = 0) -> Iterator[None]:
    """Hold the lock at ``path``, waiting up to ``wait`` seconds for it; LockBusy otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                    raise LockBusy(f"another run holds {path} ({holder}); try again, or wait with --wait SECONDS") \
                        from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:2])[:200]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
