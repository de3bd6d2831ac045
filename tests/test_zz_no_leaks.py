"""Runs last: after the whole suite, no plaintext test secret is on disk outside the managed hosts."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tests.conftest import PLAINTEXTS, Fleet

SEARCHED = ("/tmp", "/dev/shm", "/var/log", str(Path.home() / ".ansible"), "/var/tmp")


def files_containing(needles: list[bytes]) -> list[str]:
    found = []
    for top in SEARCHED:
        for directory, _, names in os.walk(top):
            if "/lab/hosts/" in directory + "/":
                continue  # the managed servers' own files: secrets belong there
            for name in names:
                path = Path(directory, name)
                try:
                    if not path.is_file() or path.is_symlink() or path.stat().st_size > 50_000_000:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                found.extend(f"{path}: {n.decode()}" for n in needles if n in data)
    return found


def test_no_plaintext_secret_reaches_a_disk_log_store_or_artifact(fleet: Fleet) -> None:
    assert fleet.controller("sync").returncode == 0
    env_file = fleet.host_file("h1", "/srv/opt/shop/conf/app.env")
    env_file.write_text("APP_API_TOKEN=changed-by-hand\n")
    drift = fleet.controller("check")
    assert drift.returncode == 2
    assert "+APP_API_TOKEN=[redacted]" in drift.stdout  # the diff held the secret, masked

    with sqlite3.connect(fleet.state / "state.db") as db:
        diffs = [row[0] for row in db.execute("SELECT diff FROM task_results")]
    assert any("[redacted]" in diff for diff in diffs)

    needles = [p.encode() for p in PLAINTEXTS]
    assert len(needles) >= 4
    assert files_containing(needles) == []
