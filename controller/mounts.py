"""Which filesystem holds a path: decrypted files may only go to memory. Standard library only: the execution
node's worker (ansible/node_worker.py) is sent this module too."""

from __future__ import annotations

import os

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
