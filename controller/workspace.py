"""The private, memory-backed workspace where a revision is unpacked and decrypted."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ControllerError
from controller.outcomes import Reason

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


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


@contextmanager
def workspace(base: Path) -> Iterator[Workspace]:
    """Create a workspace under ``base`` (which must be tmpfs) and wipe it on any exit."""
    ensure_memory_backed(base)
    root = Path(tempfile.mkdtemp(prefix="controller-", dir=base))  # mkdtemp makes it 0700
    try:
        space = Workspace(root)
        space.project.mkdir(mode=0o700)
        space.runner.mkdir(mode=0o700)
        yield space
    finally:
        shutil.rmtree(root, ignore_errors=True)


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


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/self/mounts."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mount_point = fields[1].replace("\\040", " ")
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, fields[2]
    return fstype
