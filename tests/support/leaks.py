"""The leak sweep: every plaintext secret a test made, searched for on this machine's disks."""

from __future__ import annotations

import os
from pathlib import Path

SEARCHED = ("/tmp", "/dev/shm", "/var/log", str(Path.home() / ".ansible"), "/var/tmp")


def files_containing(needles: list[bytes], searched: tuple[str, ...] = SEARCHED,
                     keep_out: str | None = "/lab/hosts/") -> list[str]:
    """``path: plaintext`` for each file under ``searched`` that holds a needle, except in directories whose path
    holds ``keep_out`` (by default the lab hosts' own files, where secrets belong)."""
    found: list[str] = []
    # the needles' common ending (``-plaintext``), looked for first: one pass over a file that holds none
    common = _ending(needles)
    for top in searched:
        for directory, _, names in os.walk(top):
            if keep_out is not None and keep_out in directory + "/":
                continue  # the managed servers' own files: secrets belong there
            for name in names:
                path = Path(directory, name)
                try:
                    if not path.is_file() or path.is_symlink() or path.stat().st_size > 50_000_000:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if common in data:
                    found.extend(f"{path}: {n.decode()}" for n in needles if n in data)
    return found


def _ending(needles: list[bytes]) -> bytes:
    """The longest ending every needle shares (``b""`` for none)."""
    ending = needles[0] if needles else b""
    for needle in needles:
        while not needle.endswith(ending):
            ending = ending[1:]
    return ending
