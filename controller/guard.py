"""Wipe a controller's workspaces the moment it dies, SIGKILL included, with no other command run.

The controller starts one guard per workspace, before creating it, with a pipe as the guard's
stdin. A controller that finishes wipes its workspace itself and then writes one byte: the guard
leaves. A controller that dies closes the pipe without a word (the kernel does that, whatever
killed it): the guard wipes every workspace named after that controller's PID. Reading a pipe
rather than waiting for PR_SET_PDEATHSIG, which fires when the *thread* that started the guard
ends: `watch` runs a dashboard's sync on a thread of its own.

A reaper (reaper.py) may still be killing a tool that writes into the workspace (a sops halfway
through a file), so the guard wipes at once, waits for the dead controller's reapers to be gone,
and wipes again. It ignores the signals a terminal or a service manager sends the whole group:
it must outlive the controller, and it ends by itself. Standard library only, started as
``python -I -S guard.py CONTROLLER_PID WORKSPACE_DIR PREFIX``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

REAPERS_GRACE = 3.0  # seconds: a reaper kills its tree within 2 s (reaper.kill_all), then exits


def wipe(base: str, prefix: str) -> None:
    """Remove every workspace under ``base`` whose name starts with ``prefix``."""
    try:
        names = [n for n in os.listdir(base) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def reapers_of(pid: int) -> list[int]:
    """Reapers (reaper.py) started by controller ``pid`` that are still running."""
    mark = f"reaper.py\0{pid}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if mark in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def main(argv: list[str]) -> int:
    """``CONTROLLER_PID WORKSPACE_DIR PREFIX``: wait for a byte (all is well) or EOF (wipe)."""
    if len(argv) != 3 or not argv[0].isdigit():
        print("usage: guard.py CONTROLLER_PID WORKSPACE_DIR PREFIX", file=sys.stderr)
        return 64
    pid, base, prefix = int(argv[0]), argv[1], argv[2]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    if os.read(0, 1):
        return 0  # the controller wiped its workspace itself
    wipe(base, prefix)
    deadline = time.monotonic() + REAPERS_GRACE
    while reapers_of(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    wipe(base, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
