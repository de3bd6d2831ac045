"""Fetch plus snapshot of a large repository (many files, long history) when one commit changed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from controller.source.git import Source


def _file(number: int) -> str:
    return f"files/d{number // 100:03d}/f{number:05d}.yml"


def _commit(mark: int, parent: str | None, changes: dict[str, str], when: int) -> bytes:
    lines = [f"commit refs/heads/main\nmark :{mark}\ncommitter Bench <bench@example.invalid> {when} +0000\n"]
    message = f"change {mark}\n"
    lines.append(f"data {len(message)}\n{message}")
    if parent:
        lines.append(f"from {parent}\n")
    for path, content in changes.items():
        data = content.encode()
        lines.append(f"M 644 inline {path}\ndata {len(data)}\n{content}\n")
    return "".join(lines).encode()


def build(remote: Path, files: int, commits: int) -> None:
    """A bare repository of ``files`` files and ``commits`` commits, written with git fast-import."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    stream = [_commit(1, None, {_file(i): f"value: {i}\n" for i in range(files)}, 1_700_000_000)]
    for mark in range(2, commits + 1):
        changed = {_file((mark * 10 + j) % files): f"value: {mark}-{j}\n" for j in range(10)}
        stream.append(_commit(mark, f":{mark - 1}", changed, 1_700_000_000 + mark))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=remote, input=b"".join(stream), check=True)


def add_commit(remote: Path, number: int) -> None:
    """One more commit on main that changes one file."""
    stream = _commit(1, "refs/heads/main^0", {_file(number): f"value: changed {number}\n"},
                     1_800_000_000 + number)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=remote, input=stream, check=True)


def fetch_and_snapshot(root: Path, files: int, commits: int, reps: int) -> dict[str, list[float]]:
    """Time the first fetch+snapshot, then ``reps`` fetch+snapshot cycles each after one new commit."""
    remote = root / "large.git"
    build(remote, files, commits)
    source = Source(str(remote), "main", root / "cache.git")
    first = _cycle(source)
    again = []
    for rep in range(reps):
        add_commit(remote, rep)
        again.append(_cycle(source))
    return {"first": [first], "one_commit_changed": again}


def _cycle(source: Source) -> float:
    target = Path(tempfile.mkdtemp(prefix="bench-snapshot-", dir="/dev/shm"))
    try:
        started = time.perf_counter()
        head = source.fetch()
        source.extract(head.sha, target)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(target, ignore_errors=True)
