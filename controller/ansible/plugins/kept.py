"""What a run works out from inputs that rarely change, kept for the runs after it.

One directory per kind of result and version of what made it; one file per entry, named by a hash
of the inputs, holding a hash of its data and the data. Keeping only ever saves work: an entry that
cannot be read, or whose data no longer matches the hash it was written with, is a miss, and a
directory that cannot be written to keeps nothing. Standard library only: it runs inside
ansible-playbook (playbook.py, plugins/strategy/controller_linear.py), where every import counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import shutil
import tempfile
import types
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

KEEP = 2048  # entries; beyond that the least recently used go


def loaded_code(data: bytes) -> types.CodeType:
    """Compiled code read back (marshal): anything else (another tool's entry, a hand's) is refused, so a miss."""
    loaded = marshal.loads(data)
    if not isinstance(loaded, types.CodeType):
        raise TypeError(f"not code: {type(loaded).__name__}")
    return loaded


class Kept:
    """Entries of one kind (``prefix``) made by one ``version`` of their maker, under ``directory``."""

    def __init__(self, directory: str, prefix: str, version: str) -> None:
        self.prefix = prefix
        self.directory = os.path.join(directory, f"{prefix}{version}")

    @staticmethod
    def key(*parts: bytes | str) -> str:
        """The name of the entry for these inputs (each part length-prefixed: no two lists share a name)."""
        digest = hashlib.sha256()
        for part in parts:
            data = part.encode("utf-8") if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "big") + data)
        return digest.hexdigest()

    def read(self, key: str) -> bytes | None:
        """The data kept under ``key``; None when there is none, or none whole."""
        path = os.path.join(self.directory, key)
        try:
            with open(path, "rb") as kept:
                stored = kept.read()
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept longest
        digest, data = stored[:32], stored[32:]
        return data if hashlib.sha256(data).digest() == digest else None  # damaged: a miss, written again

    def through(self, key: str, make: Callable[[], T], dump: Callable[[T], bytes], load: Callable[[bytes], T]) -> T:
        """What ``make`` would make, read back (``load``) from the entry under ``key`` when there is one it can
        load, else made and kept (``dump``). An entry ``load`` refuses is a miss; a value ``dump`` refuses with
        ValueError is not kept."""
        kept = self.read(key)
        if kept is not None:
            try:
                return load(kept)
            except Exception:  # written by another Python or tool, or by hand: made afresh
                pass
        value = make()
        with contextlib.suppress(ValueError):
            self.write(key, dump(value))
        return value

    def write(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key``, whole or not at all (runs at once may write the same entry)."""
        try:
            if not os.path.isdir(self.directory):
                self._forget_other_versions()
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".new-")
        except OSError:  # no room, or no right to write: this run goes without
            return
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(hashlib.sha256(data).digest() + data)
            os.replace(temporary, os.path.join(self.directory, key))
            self._prune()
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _forget_other_versions(self) -> None:
        """A new version of the maker: the entries of the one before are of no more use."""
        parent, own = os.path.split(self.directory)
        for entry in os.scandir(parent) if os.path.isdir(parent) else ():
            if entry.name.startswith(self.prefix) and entry.name != own:
                shutil.rmtree(entry.path, ignore_errors=True)

    def _prune(self) -> None:
        entries = list(os.scandir(self.directory))
        if len(entries) <= KEEP:
            return

        def used(entry: os.DirEntry[str]) -> int:
            try:
                return entry.stat().st_mtime_ns
            except OSError:
                return 0
        for old in sorted(entries, key=used)[:len(entries) - KEEP]:
            with contextlib.suppress(OSError):  # another run pruned it first
                os.unlink(old.path)
