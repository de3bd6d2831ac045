"""The deployment as docs/deploy.md writes it: the systemd unit, the cron lines, the layout, host keys.

No systemd runs here: `systemd-analyze` checks the unit offline. The cron lines run exactly as cron runs
them, taken from the docs so that the docs and this test cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from controller.ansible.job import writable_known_hosts
from controller.config import load_config
from controller.errors import ControllerError
from tests.conftest import BIN, ROOT, Fleet

UNIT = ROOT / "deploy" / "controller@.service"
CRONTAB = ROOT / "deploy" / "controller.cron"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV = "/opt/controller/venv"
CONFIG = "/etc/controller/controller.yml"
STATE = "/var/lib/controller"
CRON_ENV = ["env", "-i", "PATH=/usr/bin:/bin", "SHELL=/bin/sh"]  # all cron gives a job


def installed_here(text: str) -> str:
    """``text`` with the install path of the controller replaced by this test's venv."""
    return text.replace(VENV, str(BIN.parent))


@pytest.mark.parametrize("command", ["watch", "serve"])
def test_the_unit_verifies_and_rates_under_5_for_both_commands(tmp_path: Path, command: str) -> None:
    (tmp_path / UNIT.name).write_text(installed_here(UNIT.read_text()))
    instance = tmp_path / f"controller@{command}.service"
    verified = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True,
                              check=False)
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(instance)],
                              capture_output=True, text=True, check=False)
    print(security.stdout)
    rating = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert rating and float(rating.group(1)) < 5, security.stdout + security.stderr
    # what the unit runs exists: the command of this instance and the clean-up after a stop
    for line in UNIT.read_text().splitlines():
        if line.startswith(("ExecStart=", "ExecStopPost=")):
            argv = shlex.split(installed_here(line.split("=", 1)[1]).replace("%i", command))
            helped = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True, check=False)
            assert helped.returncode == 0, line


def test_every_path_the_docs_and_deploy_files_name_is_made_by_the_documented_install() -> None:
    install = documented_block(ROOT / "docs" / "deploy.md", "The install, as root")
    assert f"{VENV}/bin/pip install /opt/controller/src" in install
    assert "useradd --system --user-group --home-dir /var/lib/controller --shell /bin/sh controller" in install
    made = {"/opt/controller/src": ROOT, VENV: BIN.parent}
    named = set()
    for source in [*DOCS, *(ROOT / "deploy").iterdir()]:
        named.update(re.findall(r"/opt/controller/[\w./@-]*\w", source.read_text()))
    assert named
    for path in named:
        prefix = next((p for p in made if path == p or path.startswith(f"{p}/")), None)
        assert prefix is not None, f"{path}: no documented step makes it"
        assert (made[prefix] / path.removeprefix(prefix).lstrip("/")).exists(), path
    # the crontab in the docs is the file that ships
    assert documented_block(ROOT / "docs" / "deploy.md", "## Without the daemon: cron", "cron") == \
        CRONTAB.read_text()


def documented_block(doc: Path, after: str, language: str = "sh") -> str:
    """The first ```language block after the line starting with ``after``."""
    text = doc.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start:text.index("```", start)]


def cron_jobs() -> list[str]:
    """Every cron line of the docs and the README: ```cron blocks, the schedule and user taken off."""
    jobs = []
    for doc in DOCS:
        for block in re.findall(r"```cron\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                if line.strip() and not line.startswith("#") and not re.match(r"\w+=", line):
                    *schedule, user, command = line.split(None, 6)
                    assert len(schedule) == 5 and user == "controller", line  # /etc/cron.d: a user field
                    assert "%" not in command, line  # cron would cut the line there
                    jobs.append(command)
    return jobs


def run_as_cron(fleet: Fleet, command: str) -> subprocess.Popen[str]:
    line = installed_here(command).replace(CONFIG, str(fleet.config)).replace(STATE, str(fleet.state))
    return subprocess.Popen([*CRON_ENV, "sh", "-c", line], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_every_documented_cron_line_runs_under_crons_environment_and_none_refuses_another(fleet_app: Fleet) -> None:
    fleet = fleet_app  # the reports are all it reads: the app role alone
    jobs = cron_jobs()
    assert len(jobs) == 3 and all(j.startswith(f"out=$({VENV}/bin/controller ") for j in jobs), jobs
    fleet.state.mkdir(mode=0o700, exist_ok=True)  # as the install makes it
    first = run_as_cron(fleet, jobs[0])  # the sync line: a fleet never synced converges
    assert first.communicate(timeout=300) == ("", "") and first.returncode == 0
    assert json.loads((fleet.state / "sync.json").read_text())["apps"][0]["outcome"] == "converged"
    old = (fleet.state / "sync.json").open()

    # all at once, as at the top of an hour: they queue on the lock instead of exiting 75
    started = time.monotonic()
    running = [run_as_cron(fleet, job) for job in jobs]
    for proc in running:
        out, err = proc.communicate(timeout=300)
        assert (proc.returncode, out, err) == (0, "", ""), proc.args
    print(f"the three lines at once: {time.monotonic() - started:.1f}s")
    reports = {name: json.loads((fleet.state / f"{name}.json").read_text()) for name in ("sync", "check", "verify")}
    # whichever took the lock first: a check in between makes the sync a full one (the fast path counts syncs)
    assert all(report["exit_code"] == 0 for report in reports.values()), reports
    assert reports["sync"]["idle"] or reports["sync"]["apps"][0]["outcome"] == "in-sync"
    assert reports["check"]["apps"][0]["outcome"] == "in-sync" and reports["verify"]["apps"][0]["run_id"]
    assert json.loads(old.read())["apps"][0]["outcome"] == "converged"  # replaced by a rename, never rewritten
    old.close()
    assert not list(fleet.state.glob(".*.json.*"))  # no half-written report left beside them


def test_accept_new_refuses_to_start_when_it_cannot_write_known_hosts(tmp_path: Path) -> None:
    keys = tmp_path / "etc-controller"
    keys.mkdir()
    config = tmp_path / "controller.yml"
    config.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "fleet.git")},
                                      "state_dir": str(tmp_path / "state"),
                                      "ssh": {"known_hosts_file": str(keys / "known_hosts")}}))
    # what the unit's ProtectSystem= does to /etc: a read-only view of the directory
    read_only = (f"mount --bind {keys} {keys} && mount -o remount,bind,ro {keys} && "
                 f"exec {BIN / 'controller'} \"$@\" --config {config}")
    for command in ("check", "watch", "serve"):
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", read_only, "-",
                               command], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr == (f"controller: ssh.known_hosts_file {keys}/known_hosts cannot be written (Read-only "
                               "file system): with ssh.host_key_checking accept-new no host key would be recorded "
                               "and a changed one accepted; make it writable (the default, known_hosts in "
                               "state_dir, is) or fill it in advance and use strict\n"), command
    assert not (tmp_path / "state").exists()  # refused before anything started

    # in-process: writable, or another policy, is fine; the file is created empty as ssh would
    writable_known_hosts(load_config(config))
    assert (keys / "known_hosts").read_text() == ""
    config.write_text(config.read_text().replace(str(keys), str(tmp_path / "controller.yml")))
    with pytest.raises(ControllerError, match="cannot be written \\(Not a directory\\)"):
        writable_known_hosts(load_config(config))
    write_strict = yaml.safe_load(config.read_text())
    write_strict["ssh"]["host_key_checking"] = "strict"
    config.write_text(yaml.safe_dump(write_strict))
    writable_known_hosts(load_config(config))  # strict only reads it
