"""The leak sweep (run by conftest when the session ends) finds what it looks for; masked diffs in the store."""

from __future__ import annotations

import sqlite3
import tempfile

from tests.conftest import Fleet, secret
from tests.support.leaks import files_containing


def test_the_sweep_finds_a_plaintext_left_in_tmp_or_dev_shm() -> None:
    needle = secret("planted")
    for top in (tempfile.gettempdir(), "/dev/shm"):
        with tempfile.NamedTemporaryFile("w", dir=top, suffix=".log") as planted:
            planted.write(f"password={needle}\n")
            planted.flush()
            assert files_containing([needle.encode()], (top,)) == [f"{planted.name}: {needle}"]
        assert files_containing([needle.encode()], (top,)) == []


def test_a_hand_edited_secret_is_masked_in_the_check_and_the_store(converged_app: Fleet) -> None:
    env_file = converged_app.host_file("h1", "/srv/opt/shop/conf/app.env")
    env_file.write_text("APP_API_TOKEN=changed-by-hand\n")
    drift = converged_app.controller("check")
    assert drift.returncode == 2
    assert "+APP_API_TOKEN=[redacted]" in drift.stdout  # the diff held the secret, masked

    with sqlite3.connect(converged_app.state / "state.db") as db:
        diffs = [row[0] for row in db.execute("SELECT diff FROM task_results")]
    assert any("[redacted]" in diff for diff in diffs)
    assert not any(plaintext in diff for diff in diffs for plaintext in converged_app.secrets.values())
