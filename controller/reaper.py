"""Run one command so that it, and everything it starts, dies with the controller.

The controller starts every tool (git, sops, ansible-playbook) through this script. It
becomes a child subreaper, so descendants that detach (ssh ControlPersist masters,
mitogen's multiplexer) are re-parented here instead of to init, and it kills them all
when the command ends, when it is told to stop (SIGTERM, SIGINT, SIGHUP), or when the
controller dies, SIGKILL included (PR_SET_PDEATHSIG). Standard library only: it runs as
``python -I -S reaper.py PARENT_PID COMMAND...``, so it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

TYPE_CHECKING = False  # typing itself is too slow an import for this script
if TYPE_CHECKING:
    import signal
else:  # the C module under signal: the same calls and numbers, without the enum import (a third of our start-up)
    import _signal as signal

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
NOT_FOUND = 127
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (of all its threads), read from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                found.extend(int(k) for k in listed.read().split())
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children before grandchildren)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = children(pending.pop())
        found.extend(kids)
        pending.extend(kids)
    return found


def become_subreaper() -> None:
    """Descendants that detach (ssh ControlPersist masters, mitogen) are re-parented here, for kill_all to find."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def kill_all() -> None:
    """SIGKILL every descendant until none is left (they may fork while we kill)."""
    deadline = time.monotonic() + 2  # well inside the controller's grace (process.STOP_GRACE) before it kills us
    while time.monotonic() < deadline:
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:  # noqa: SIM105 (not contextlib.suppress: contextlib is a slow import for this script)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()
        time.sleep(0.01)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _stop(signum: int, frame: object) -> None:
    kill_all()
    os._exit(128 + signum)


def main(argv: list[str]) -> int:
    """``PARENT_PID COMMAND...``: run COMMAND as a child; return its status once every descendant is gone."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: reaper.py PARENT_PID COMMAND [ARG...]", file=sys.stderr)
        return 64
    # the PID the controller passed, not getppid(): the controller may already be gone by now
    parent, argv = int(argv[0]), argv[1:]
    become_subreaper()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    if os.getppid() != parent:
        return 128 + signal.SIGTERM  # the controller died before the death signal was armed
    reaper = os.getpid()
    child = os.fork()
    if child == 0:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # should this reaper itself be killed
        if os.getppid() != reaper:
            os._exit(128 + signal.SIGKILL)  # it was, before the death signal was armed
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"{argv[0]}: {exc.strerror}\n".encode())
        os._exit(NOT_FOUND)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    kill_all()
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
