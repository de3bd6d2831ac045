"""Live progress as a person sees it: in a real terminal (tmux), and through a pipe as cron and CI read it."""

from __future__ import annotations

import fcntl
import os
import re
import select
import shlex
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from controller.ansible.results import TaskResult
from controller.report.colour import wanted
from controller.report.terminal import TICK, TTY_QUIET, TerminalProgress
from controller.vocabulary import TaskStatus
from tests.conftest import APP_YML, BIN, Fleet

SLOW_FACT = "#!/bin/sh\nsleep 6\necho '{\"slow\": true}'\n"  # a local fact: Gathering Facts waits for it


def tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=True).stdout


def test_a_terminal_sees_a_heartbeat_while_facts_are_gathered_and_colour_the_pipe_does_not(
        converged_app: Fleet, tmp_path: Path) -> None:
    site = converged_app.work / "playbooks/site.yml"
    site.write_text(site.read_text().replace("gather_facts: false", "gather_facts: true", 1))
    converged_app.push("Gather facts for the application's play")
    slow = converged_app.lab.host("h1").path("/etc/ansible/facts.d/slow.fact")
    slow.parent.mkdir(parents=True, exist_ok=True)
    slow.write_text(SLOW_FACT)
    slow.chmod(0o755)
    config = converged_app.host_file("h2", APP_YML)
    config.write_text(config.read_text().replace("workers: 2", "workers: 64"))  # drift: a diff in the report

    socket = f"progress-{os.getpid()}"
    command = f"env CONTROLLER_CONFIG={shlex.quote(str(converged_app.config))} TERM=xterm-256color " \
              f"{BIN / 'controller'} check; echo EXIT=$?; sleep 60"
    tmux(socket, "new-session", "-d", "-x", "220", "-y", "60", "-s", "progress", command)
    try:
        screens: list[tuple[float, str]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = tmux(socket, "capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "progress")
            screens.append((time.monotonic(), screen))
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False)
    final = screens[-1][1]
    assert "EXIT=2" in final, final

    # a heartbeat within 5 s of the check starting, naming the task under way and who has answered
    check_began = next(t for t, s in screens if "==> staging: check" in s)
    heartbeats = [(t, s) for t, s in screens if "[staging check] Gathering Facts: 1/2 host(s) answered" in s]
    assert heartbeats, "no heartbeat while web1 gathered its facts"
    first_beat = next(t for t, s in screens if t >= check_began and re.search(r"\.\.\. \d+(s|m)", s))
    assert first_beat - check_began < 5, first_beat - check_began

    # colour on the terminal: the drifted outcome and the diff's lines; the change is said once, in the report
    assert "\033[33mdrifted" in final and "\033[32m+workers: 2" in final, final
    assert final.count("app : Render the application configuration") == 1, final

    # through a pipe: no colour, no status line, whatever TERM says
    env = {**os.environ, "CONTROLLER_CONFIG": str(converged_app.config), "TERM": "xterm-256color"}
    piped = subprocess.run(["bash", "-c", f"{BIN / 'controller'} check --progress 2>&1 | cat"], env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert "==> staging: check" in piped.stdout and "drifted" in piped.stdout, piped.stdout
    assert "\033[" not in piped.stdout and "\r" not in piped.stdout


def test_colour_only_on_a_terminal_and_never_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal, open(os.devnull, "w") as file:
        monkeypatch.setenv("TERM", "xterm")
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert wanted(terminal) and not wanted(file)
        monkeypatch.setenv("NO_COLOR", "")  # set, even empty: no colour (no-color.org)
        assert not wanted(terminal)
        monkeypatch.delenv("NO_COLOR")
        monkeypatch.setenv("TERM", "dumb")
        assert not wanted(terminal)
    os.close(leader)


def test_apps_at_once_each_keep_their_task_in_the_terminals_status_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    leader, follower = os.openpty()

    def status_line(columns: int) -> str:
        """The status line the terminal shows last, ``columns`` wide."""
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        os.read(leader, 65536) if select.select([leader], [], [], 0)[0] else b""
        time.sleep(2 * TICK)  # redrawn every tick once the terminal is quiet
        shown = os.read(leader, 65536).decode()
        return shown.rpartition("\r\033[K")[2]

    with os.fdopen(follower, "w", closefd=False) as terminal:
        progress = TerminalProgress(True, False, terminal)
        progress.started("staging", "check", "Install the app", "web1.staging")
        progress.started("staging", "check", "Install the app", "web2.staging")
        progress.started("production", "apply", "Render app.yml", "web1.prod")
        progress.task("staging", "check", TaskResult("web1.staging", "Install the app", "copy", TaskStatus.OK))
        progress.started("audit", "check", "Read the logs", "log1")
        progress.task("audit", "check", TaskResult("log1", "Read the logs", "command", TaskStatus.OK))
        progress.step("production: apply (playbooks/site.yml on inventories/production)")  # the tasks done go
        time.sleep(TTY_QUIET)
        wide, narrow = status_line(160), status_line(40)
        progress.close()
    os.close(follower)
    os.close(leader)
    assert "[staging check] Install the app: 1/2 host(s) answered; " \
           "[production apply] Render app.yml: 0/1 host(s) answered" in wide and "audit" not in wide, wide
    # one screen row whatever the width: a wrapped line would pile up, as \r\033[K clears only the cursor's row
    assert len(narrow) == 39 and wide.partition("  ")[2].startswith(narrow.partition("  ")[2]), (narrow, wide)
