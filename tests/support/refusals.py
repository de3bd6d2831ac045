"""What a refused run must look like: one line, exit 1, nothing applied, history kept."""

from __future__ import annotations

from tests.conftest import VERSION, Fleet


def assert_refused(fleet: Fleet, args: tuple[str, ...], reason: str, *needles: str) -> None:
    """Exit 1, one line on stderr naming the problem, nothing applied, earlier history intact."""
    history = fleet.runs()
    versions = {h: fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")}
    done = fleet.controller(*args)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0]
    assert {h: fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")} == versions
    after = fleet.runs()
    assert after[len(after) - len(history):] == history
    if len(after) > len(history):
        assert after[0]["outcome"] == "failed" and after[0]["reason"] == reason
