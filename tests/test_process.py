"""process.run_side_by_side: many commands at once under one reaper, each with its own output and status."""

from __future__ import annotations

import os
import subprocess
import time

from controller.process import run_side_by_side, stop_children, stream


def test_each_command_keeps_its_output_and_status_and_a_slow_one_is_cut_off() -> None:
    started = time.monotonic()
    # more commands than one shell can redirect with single-digit descriptors, and more than one batch
    commands = {f"echo{i}": ["sh", "-c", f"echo out{i}; echo err{i} >&2; exit {i % 7}"] for i in range(230)}
    commands["slow"] = ["sleep", "30"]
    commands["missing"] = ["no-such-command-here"]
    done = run_side_by_side(commands, env={"PATH": os.environ["PATH"]}, timeout=2)
    assert time.monotonic() - started < 10
    for i in range(230):
        assert done[f"echo{i}"].code == i % 7 and done[f"echo{i}"].out == f"out{i}\n"
        assert done[f"echo{i}"].err == f"err{i}\n"
    assert done["slow"].code is None and "no answer within 2s" in done["slow"].err
    assert done["missing"].code == 127
    # the slow one did not outlive the call
    assert subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True).returncode == 1


def test_stopping_its_children_stops_what_it_started_and_nothing_else() -> None:
    theirs = subprocess.Popen(["sleep", "30"])  # not started here: a caller's `tee` in `controller check > >(tee)`
    try:
        with stream(["sleep", "31"], env={"PATH": os.environ["PATH"]}) as ours:
            stop_children()
            assert ours.wait(timeout=15) is not None
            assert subprocess.run(["pgrep", "-f", "^sleep 31$"], capture_output=True).returncode == 1
        assert theirs.poll() is None
    finally:
        theirs.kill()
        theirs.wait()
