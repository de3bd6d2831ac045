"""SIGTERM in the middle of a playbook: the run stops, is recorded, and leaves no secrets behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import BIN, VERSION, Fleet
from tests.support.processes import workspaces


def test_sigterm_mid_run_stops_cleanly(fleet_app: Fleet) -> None:
    fleet = fleet_app
    # a check first (it changes nothing): the sync's syntax check passed before, so its process starts with the check
    assert fleet.controller("check").returncode == 2
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    proc = subprocess.Popen([str(BIN / "controller"), "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    running: set[Path] = set()
    while time.monotonic() < deadline and not running:
        running = {p for p in workspaces(proc.pid) if (p / "runner" / "check").exists()}
        time.sleep(0.05)
    assert running, "the check never started"
    time.sleep(0.5)
    # what ansible-runner keeps while the playbook runs: its command line and environment (no secret in either),
    # the event files its callback hands over (read and deleted at once); never the raw output, --diff and all
    [space] = running
    artifacts = {path.name for path in (space / "runner").rglob("artifacts/*/*")}
    assert "command" in artifacts and not artifacts & {"stdout", "stderr"}, artifacts
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "interrupted" in stdout + stderr
    assert workspaces(proc.pid) == set()
    leftovers = subprocess.run(["pgrep", "-af", str(next(iter(running)))], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    [run, _] = json.loads(fleet.controller("history", "--json").stdout)  # the newest first, then the check
    assert (run["outcome"], run["reason"]) == ("interrupted", "Interrupted")


def test_sigterm_during_the_syntax_check_stops_the_run_before_any_check(fleet_app: Fleet, tmp_path: Path) -> None:
    fleet = fleet_app
    # an inventory script (Ansible runs an executable file in the inventory) that holds the syntax check alone until
    # the signal is sent, then lets it end at once: the signal lands while it ends, as it may in any run
    started, hold, sent = tmp_path / "started", tmp_path / "hold", tmp_path / "sent"
    fleet.write("inventories/staging/held.sh",
                f"#!/bin/sh\nif [ -e {hold} ] && grep -q -- --syntax-check /proc/$PPID/cmdline; then\n"
                f"  rm {hold}; touch {started}; while [ ! -e {sent} ]; do sleep 0.01; done\nfi\n"
                f"echo '{{\"_meta\": {{\"hostvars\": {{}}}}}}'\n")
    (fleet.work / "inventories/staging/held.sh").chmod(0o755)
    fleet.push("An inventory script")
    hold.touch()
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    proc = subprocess.Popen([str(BIN / "controller"), "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not started.exists():
            time.sleep(0.05)
        assert started.exists(), "the syntax check never started"
        [space] = workspaces(proc.pid)
        proc.send_signal(signal.SIGTERM)
    finally:
        sent.touch()
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, stdout + stderr
    assert "interrupted" in stdout + stderr
    assert workspaces(proc.pid) == set()
    assert subprocess.run(["pgrep", "-af", str(space)], capture_output=True, text=True).stdout.strip() == ""
    [run] = json.loads(fleet.controller("history", "--json").stdout)
    assert (run["outcome"], run["reason"]) == ("interrupted", "Interrupted")
    assert not fleet.host_file("h1", VERSION).exists()  # never checked, never applied
