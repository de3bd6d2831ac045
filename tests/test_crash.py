"""Crash safety: SIGKILL, SIGTERM at every stage, a host that freezes mid-run. Nothing is left behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from tests.conftest import BIN, VERSION, Fleet, write_config

STAGES = ("fetching", "revision", "decrypting", "syntax check", "staging: check", "staging: apply")


def start_sync(fleet: Fleet) -> subprocess.Popen[str]:
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    return subprocess.Popen([str(BIN / "controller"), "sync", "--progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_stage(proc: subprocess.Popen[str], stage: str, timeout: float = 60) -> None:
    """Read the progress on stderr until ``stage`` starts."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the run ended before {stage!r}")
        if line.startswith(f"==> {stage}"):
            return
    raise AssertionError(f"{stage!r} did not start within {timeout}s")


def leftovers(fleet: Fleet, pid: int) -> list[str]:
    """Processes still working for the controller ``pid``: in its workspace, its state, or ssh to the lab."""
    marks = (f"controller-{pid}-", str(fleet.state))
    addresses = [h.address for h in fleet.lab.hosts]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            zombie = "State:\tZ" in (entry / "status").read_text()
        except OSError:
            continue
        if zombie or cmdline.startswith(("unshare", "sshd", "/usr/sbin/sshd")):
            continue  # the lab hosts themselves
        if any(mark in cmdline or mark in cwd for mark in marks) or (
                "ssh" in cmdline.split(" ")[0] and any(a in cmdline for a in addresses)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def workspaces_of(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"controller-{pid}-*"))


def lock_is_free(fleet: Fleet) -> bool:
    probe = subprocess.run(["flock", "--nonblock", str(fleet.state / "controller.lock"), "true"], check=False)
    return probe.returncode == 0


def test_sigterm_at_every_stage_ends_within_10s_and_leaves_nothing(fleet_app: Fleet) -> None:
    fleet = fleet_app
    for stage in STAGES:
        proc = start_sync(fleet)
        wait_for_stage(proc, stage)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - started < 10, stage
        assert proc.returncode == 1, stage
        assert leftovers(fleet, proc.pid) == [], stage
        assert workspaces_of(proc.pid) == [], stage
        assert lock_is_free(fleet), stage
        run = fleet.runs()[0]
        assert run["outcome"] == "interrupted" and run["reason"] == "Interrupted", (stage, run)
        assert proc.stderr is not None and proc.stdout is not None
        assert "interrupted" in proc.stdout.read() + proc.stderr.read()


def test_a_look_stopped_before_it_found_anything_to_do_is_no_run(converged_app: Fleet, tmp_path: Path) -> None:
    # what watch's polls and cron's --only-if-changed do: stopped while fetching, nothing was under way
    slow = tmp_path / "slow-git"
    slow.mkdir()
    real = shutil.which("git")
    (slow / "git").write_text(f'#!/bin/sh\ncase " $* " in *" fetch "*) sleep 3;; esac\nexec {real} "$@"\n')
    (slow / "git").chmod(0o755)
    runs = converged_app.runs()
    env = {**os.environ, "CONTROLLER_CONFIG": str(converged_app.config), "PATH": f"{slow}:{os.environ['PATH']}"}
    proc = subprocess.Popen([str(BIN / "controller"), "sync", "--only-if-changed", "--progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_stage(proc, "fetching")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 1
    assert proc.stderr is not None and "interrupted by SIGTERM" in proc.stderr.read()
    assert converged_app.runs() == runs  # no interrupted run, no "branch not found": the status keeps what it said
    assert lock_is_free(converged_app) and leftovers(converged_app, proc.pid) == []


def test_random_sigkills_leave_no_process_workspace_or_running_run(fleet_app: Fleet) -> None:
    fleet = fleet_app
    seed = int(os.environ.get("CONTROLLER_TEST_SEED", time.time()))
    print(f"seed {seed}")
    rng = random.Random(seed)
    # every stage once, then six drawn at random; each killed at a random moment inside it
    for attempt, stage in enumerate([*STAGES, *(rng.choice(STAGES) for _ in range(6))]):
        # an apply can end within the wait before the kill: a file gone by hand gives every sync one to reach
        for host in ("h1", "h2"):
            fleet.host_file(host, VERSION).unlink(missing_ok=True)
        proc = start_sync(fleet)
        wait_for_stage(proc, stage)
        time.sleep(rng.uniform(0, 1.5))
        proc.kill()
        killed = time.monotonic()
        proc.wait()
        # no other command has run: the guard wipes the workspace (decrypted files, runner artifacts) within a
        # second, and the reapers take every process the controller had started with them (each within its
        # kill_all's 2 s, however loaded the machine)
        while workspaces_of(proc.pid) and time.monotonic() - killed < 1:
            time.sleep(0.01)
        assert workspaces_of(proc.pid) == [], f"attempt {attempt} at {stage!r} (seed {seed})"
        while leftovers(fleet, proc.pid) and time.monotonic() - killed < 5:
            time.sleep(0.02)
        assert leftovers(fleet, proc.pid) == [], f"attempt {attempt} at {stage!r} (seed {seed})"
        status = fleet.controller("status", "--json")  # and any command marks its run interrupted
        assert status.returncode == 0, status.stderr
        assert all(row["state"] != "running" for row in json.loads(status.stdout))
        assert all(run["outcome"] is not None for run in fleet.runs())
    with sqlite3.connect(fleet.state / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    final = fleet.controller("sync")
    assert final.returncode == 0, final.stdout + final.stderr
    for host in ("h1", "h2"):
        assert fleet.host_file(host, VERSION).read_text() == "1.0.0\n"
    assert "interrupted" in {run["outcome"] for run in fleet.runs()}


def test_a_killed_controller_s_guard_wipes_its_workspace_and_only_that() -> None:
    # a controller stand-in holding a workspace with a decrypted file, and a tool running in it under a reaper
    script = ("import sys, time\nfrom pathlib import Path\nfrom controller.process import stream\n"
              "from controller.secrets.workspace import workspace\n"
              "with workspace(Path('/dev/shm')) as space:\n"
              "    (space.project / 'secrets.yml').write_text('password: hunter2')\n"
              "    with stream(['sleep', '60'], env={'PATH': '/usr/bin:/bin'}, cwd=space.project):\n"
              "        print(space.root, flush=True)\n"
              "        time.sleep(60)\n")
    # another controller's workspace (this test's PID: alive) is left alone
    other = Path(tempfile.mkdtemp(prefix=f"controller-{os.getpid()}-", dir="/dev/shm"))
    proc = subprocess.Popen([str(BIN / "python"), "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    root = Path(proc.stdout.readline().strip())
    assert (root / "project" / "secrets.yml").exists()
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a terminal's kill would: the guard is not in it
    killed = time.monotonic()
    proc.wait()
    while root.exists() and time.monotonic() - killed < 1:
        time.sleep(0.005)
    took = time.monotonic() - killed
    print(f"wiped {took * 1000:.0f} ms after the SIGKILL")
    assert not root.exists() and took < 1
    assert other.exists()
    other.rmdir()
    # and the guard itself is gone soon after (it may still be exiting the instant the workspace went)
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", f"guard.py {proc.pid} "], capture_output=True).returncode != 1:
        assert time.monotonic() < deadline, "the guard outlived its wipe"
        time.sleep(0.05)


def test_a_host_that_freezes_mid_check_costs_a_bounded_time(fleet_app: Fleet) -> None:
    fleet = fleet_app
    write_config(fleet, ssh={"private_key_file": str(fleet.lab.private_key),
                             "known_hosts_file": str(fleet.lab.known_hosts)},
                 ansible={"task_timeout": 10, "timeout": 10})  # h1's tasks finish well inside, even on a busy machine
    # web2's check runs a task that says so and lasts 3 s: frozen inside it, whatever the machine's speed, the host
    # is connected and mid-task; left alone, it would end well inside task_timeout
    held = "/tmp/held-in-check"
    [play] = yaml.safe_load((fleet.work / "playbooks/site.yml").read_text())
    # (the shell makes the marker itself and becomes the sleep: no process starts or ends as the host is frozen)
    play["pre_tasks"] = [{"name": "Hold web2 mid-check", "ansible.builtin.shell": f": > {held} && exec sleep 3",
                          "check_mode": False, "changed_when": False,
                          "when": "inventory_hostname == 'web2.staging'"}]
    fleet.write("playbooks/site.yml", yaml.safe_dump([play], sort_keys=False))
    fleet.push("web2 holds mid-check")
    proc = start_sync(fleet)
    try:
        wait_for_stage(proc, "staging: check")
        deadline = time.monotonic() + 60
        while not fleet.host_file("h2", held).exists():
            assert time.monotonic() < deadline and proc.poll() is None, "web2's check never started its task"
            time.sleep(0.01)
        frozen = fleet.lab.freeze_host("h2")
        assert frozen
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=90)
        took = time.monotonic() - started
    finally:
        fleet.lab.thaw_host("h2")
        proc.kill()  # only if the test failed before it ended
    print(f"frozen host cost {took:.1f}s")
    assert proc.returncode == 2, stdout + stderr
    assert took < 60
    assert fleet.host_file("h1", VERSION).read_text() == "1.0.0\n"
    run = fleet.runs()[0]
    assert run["outcome"] == "partial"
    shown = fleet.controller("show", str(run["id"]))
    assert "web2.staging  unreachable" in shown.stdout
    assert lock_is_free(fleet)
    unreachable = unreachable_in(fleet, run["id"])
    assert unreachable["check"] == ["timed out: no answer within ansible.task_timeout (10s)"], unreachable
    assert unreachable["apply"] == [], unreachable  # not dialled again: another 10 s under the lock for nothing

    # frozen before the run: the connection never comes up, which is ansible.timeout's, not task_timeout's
    write_config(fleet, ssh={"private_key_file": str(fleet.lab.private_key),
                             "known_hosts_file": str(fleet.lab.known_hosts)},
                 ansible={"task_timeout": 30, "timeout": 3})
    fleet.lab.freeze_host("h2")
    try:
        code, report = fleet.controller_json("check")
    finally:
        fleet.lab.thaw_host("h2")
    assert code == 2
    [message] = unreachable_in(fleet, report["apps"][0]["run_id"])["check"]
    print(f"a host frozen before the run: {message}")
    assert message.startswith("could not connect within ansible.timeout (3s): "), message
    assert "timed out" in message.lower() and "task_timeout" not in message


def unreachable_in(fleet: Fleet, run_id: int) -> dict[str, list[str]]:
    """The messages of web2.staging's unreachable tasks in run ``run_id``, per phase."""
    shown = json.loads(fleet.controller("show", str(run_id), "--json").stdout)
    return {phase: [t["message"] for t in shown["tasks"] if t["phase"] == phase and t["host"] == "web2.staging"
                    and t["status"] == "unreachable"] for phase in ("check", "apply")}
