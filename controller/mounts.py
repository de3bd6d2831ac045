"""Which filesystem holds a path (decrypted files may only go to memory), and which private directories a dead
process left there. Standard library only: the execution node's worker (ansible/node_worker.py) is sent this
module too."""

from __future__ import annotations

import os
from pathlib import Path

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem_type(path: str | os.PathLike[str]) -> str:
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


def orphaned(base: Path, prefix: str) -> list[Path]:
    """The directories ``base/PREFIX<pid>-...`` whose process is gone (killed, crashed), oldest name first; one whose
    PID was reused is left until that process is gone too."""
    return [root for root in sorted(base.glob(f"{prefix}*"))
            if (pid := root.name.removeprefix(prefix).split("-")[0]).isdigit() and not _alive(int(pid))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
