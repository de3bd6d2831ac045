"""The private, memory-backed workspace where a revision is unpacked and decrypted."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ControllerError
from controller.mounts import MEMORY_FILESYSTEMS, filesystem_type, orphaned
from controller.process import guarded, stop_children
from controller.vocabulary import Reason

PREFIX = "controller-"


@dataclass(frozen=True)
class Workspace:
    """A 0700 directory on tmpfs: ``project`` holds the revision, ``runner`` ansible-runner's files."""

    root: Path

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def runner(self) -> Path:
        return self.root / "runner"

    @property
    def job(self) -> Path:
        """Private files of the Ansible job: local temp, ssh sockets, the ssh wrapper."""
        return self.root / "job"

    def make(self) -> Workspace:
        """Create its directories, 0700 (``root`` too when it does not exist yet)."""
        for directory in (self.root, self.project, self.runner, self.job):
            directory.mkdir(mode=0o700, exist_ok=directory == self.root)
        return self


@contextmanager
def workspace(base: Path) -> Iterator[Workspace]:
    """Create a workspace under ``base`` (which must be tmpfs) and wipe it on any exit.

    Its name carries this process's PID, so the guard (guard.py) wipes it the moment this process
    dies, and :func:`sweep` can tell one left behind (a guard killed too) from one in use.
    """
    ensure_memory_backed(base)
    prefix = f"{PREFIX}{os.getpid()}-"
    with guarded(base, prefix):  # armed first: a SIGKILL at any moment after this leaves nothing behind
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))  # mkdtemp makes it 0700
        try:
            yield Workspace(root).make()
        finally:
            try:
                stop_children()  # nothing may still be writing into it (a sops interrupted mid-decryption)
            finally:
                _wipe(root)


def sweep(base: Path) -> list[Path]:
    """Wipe workspaces whose controller process is gone (killed, crashed); return what was wiped."""
    wiped = orphaned(base, PREFIX)
    for root in wiped:
        _wipe(root)
    return wiped


def _wipe(root: Path) -> None:
    # a SIGTERM or Ctrl-C arriving now waits until the secrets are gone; in `watch` another thread
    # may take the signal and Python then raises in this one, so a cut-short wipe is finished first
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        shutil.rmtree(root, ignore_errors=True)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # only the first signal raises (interrupt.Cancel)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def ensure_memory_backed(path: Path) -> None:
    """Refuse to decrypt anything onto a persistent disk."""
    if not path.is_dir():
        raise ControllerError(Reason.WORKSPACE_UNAVAILABLE,
                              f"workspace_dir {path} does not exist (it must be a tmpfs such as /dev/shm)")
    fstype = filesystem_type(path)
    if fstype not in MEMORY_FILESYSTEMS:
        raise ControllerError(Reason.WORKSPACE_UNAVAILABLE,
                              f"workspace_dir {path} is on {fstype}, not tmpfs: decrypted secrets "
                              "must never reach a persistent disk (mount a tmpfs or use /dev/shm)")
