"""The command's conventions on a store with history: status APP, history filters, suspend/resume twice,
version, shell completion. No lab: what these read is the state store (a 0.1.0 database, migrated)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from controller.clock import ago, parse_time
from controller.state.store import Store
from controller.vocabulary import Kind, Outcome, Trigger
from tests.conftest import BIN

DATA = Path(__file__).parent / "data"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A bastion config whose store holds staging (3 runs), production (1, suspended) and two verify runs."""
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "state.db") as db:
        db.executescript((DATA / "state-0.1.0.sql").read_text())
    with Store(state / "state.db") as store:
        for trigger, outcome in ((Trigger.VERIFY, Outcome.IN_SYNC), (Trigger.SCHEDULE, Outcome.DRIFTED)):
            run = store.start_run("staging", "2" * 40, Kind.VERIFY, trigger)
            store.finish_run(run, outcome, None, f"{outcome} by {trigger}", False, {})
    path = tmp_path / "controller.yml"
    path.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git")}, "state_dir": str(state)}))
    return path


def controller(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "controller"), "--config", str(config), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_status_of_one_app_shows_why_it_is_suspended(config: Path) -> None:
    one = controller(config, "status", "production")
    assert one.returncode == 0, one.stderr
    [header, line] = one.stdout.splitlines()
    assert header.startswith("APP ")
    assert line.startswith("production ") and "SUSPENDED since 2026-11-23 20:48: change freeze" in line
    [document] = json.loads(controller(config, "status", "--json", "production").stdout)
    assert document["suspension"] == {"since": "2026-11-23T20:48:59+00:00", "reason": "change freeze"}
    assert [d["app"] for d in json.loads(controller(config, "status", "--json").stdout)] == ["production", "staging"]
    typo = controller(config, "status", "prodution")
    assert typo.returncode == 1
    assert typo.stderr == ("controller: no app 'prodution' has been reconciled here (apps: production, staging); "
                           "check the name\n")


def test_history_filters_by_kind_outcome_and_trigger(config: Path) -> None:
    def ids(*args: str) -> list[int]:
        done = controller(config, "history", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [run["id"] for run in json.loads(done.stdout)]

    assert ids() == [6, 5, 4, 3, 2, 1]
    assert ids("--kind", "verify") == [6, 5]
    assert ids("--kind", "sync") == [4, 3, 1]
    assert ids("--outcome", "drifted") == [6, 4, 2]
    assert ids("--kind", "verify", "--outcome", "drifted") == [6]
    assert ids("--trigger", "schedule") == [6]
    assert ids("--app", "staging", "--kind", "sync", "--trigger", "manual") == [3, 1]
    text = controller(config, "history", "--kind", "verify")
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 3, text.stdout  # a header and two runs
    wrong = controller(config, "history", "--kind", "deploy")
    assert wrong.returncode == 64 and "'deploy' is not one of 'check', 'preview', 'sync', 'verify'" in wrong.stderr


def test_suspend_and_resume_twice_keep_the_reason_and_change_nothing_the_second_time(config: Path) -> None:
    def held() -> dict[str, str] | None:
        [document] = json.loads(controller(config, "status", "--json", "staging").stdout)
        return document["suspension"]  # type: ignore[no-any-return]

    first = controller(config, "resume", "staging")
    assert (first.returncode, first.stdout) == (0, "staging was not suspended: nothing to do\n")
    assert controller(config, "suspend", "staging", "--reason", "disk swap").returncode == 0
    since = held()
    assert since is not None and since["reason"] == "disk swap"
    again = controller(config, "suspend", "staging")
    assert again.returncode == 0
    assert again.stdout.startswith(f"staging already suspended since {since['since']} (disk swap)")
    assert held() == since  # the reason and since when kept
    assert controller(config, "suspend", "staging", "--reason", "disk swap, day 2").returncode == 0
    assert held() == {**since, "reason": "disk swap, day 2"}
    assert "SUSPENDED since" in controller(config, "status", "staging").stdout
    assert controller(config, "resume", "staging").stdout == "resumed staging\n"
    assert held() is None
    assert controller(config, "resume", "staging").returncode == 0
    typo = controller(config, "resume", "stagin")
    assert typo.returncode == 1 and "no app 'stagin'" in typo.stderr


def test_version_names_every_component_a_run_depends_on() -> None:
    done = subprocess.run([str(BIN / "controller"), "version", "--json"], capture_output=True, text=True,
                          timeout=60, check=True)
    found = json.loads(done.stdout)
    assert list(found) == ["controller", "python", "ansible-core", "ansible-runner", "mitogen", "sops", "age", "git"]
    for package in ("ansible-core", "ansible-runner", "mitogen"):
        assert found[package] == version(package)
    for tool in ("sops", "age", "git"):
        assert found[tool][0].isdigit(), found  # a version, not "not installed"
    assert found["python"].startswith("3.11.") and str(BIN) in found["python"]  # Debian's, in the venv
    text = subprocess.run([str(BIN / "controller"), "version"], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and text.stdout.splitlines()[2] == f"ansible-core    {found['ansible-core']}"
    # the tools are looked for on PATH (sops in its package first): one missing is said, not fatal
    bare = subprocess.run([str(BIN / "controller"), "version", "--json"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": "/nonexistent"})
    assert bare.returncode == 0 and json.loads(bare.stdout)["git"] == "not installed"


def test_completion_completes_commands_and_options_in_a_real_bash(tmp_path: Path) -> None:
    script = tmp_path / "controller.bash"
    done = subprocess.run([str(BIN / "controller"), "completion", "bash"], capture_output=True, text=True,
                          timeout=60, check=True)
    script.write_text(done.stdout)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 "_controller_completion controller; printf '%s\\n' \"${COMPREPLY[@]}\"")
        answer = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, env=env)
        assert answer.returncode == 0, answer.stderr
        return answer.stdout.split()

    assert "status" in complete("controller", "sta") and "sync" not in complete("controller", "sta")
    assert complete("controller", "history", "--ki") == ["--kind"]
    assert set(complete("controller", "history", "--kind", "")) == {"check", "preview", "sync", "verify"}
    assert "_CONTROLLER_COMPLETE=zsh_complete" in controller_output("completion", "zsh")
    assert "_CONTROLLER_COMPLETE=fish_complete" in controller_output("completion", "fish")


def controller_output(*args: str) -> str:
    return subprocess.run([str(BIN / "controller"), *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_tables_say_how_long_ago_and_json_keeps_the_time(config: Path) -> None:
    now = parse_time("2026-11-23T20:48:59+00:00")
    assert [ago(stamp, now) for stamp in ("2026-11-23T20:48:59+00:00", "2026-11-23T20:48:17+00:00",
                                          "2026-11-23T20:43:59+00:00", "2026-11-23T17:40:00+00:00",
                                          "2026-11-21T20:48:59+00:00", "2026-11-23T20:50:00+00:00")] == [
        "just now", "42s ago", "5m ago", "3h ago", "2d ago", "just now"]
    table = controller(config, "history", "--app", "production").stdout.splitlines()
    assert table[0].split() == ["RUN", "APP", "MODE", "TRIGGER", "REVISION", "STARTED", "OUTCOME"]
    assert re.fullmatch(r"\s+4  production\s+sync\s+manual\s+222222222222 \d+d ago\s+drifted", table[1]), table
    [run] = json.loads(controller(config, "history", "--json", "--app", "production").stdout)
    assert run["started"] == "2026-11-23T20:48:59+00:00"
    status = controller(config, "status", "staging").stdout.splitlines()[1]
    assert re.search(r" drifted\s+-\s+\d+d ago ", status), status  # the newest check or sync: 3, days ago; no health


def test_every_document_reads_the_same_as_yaml(config: Path) -> None:
    for command in (["status"], ["status", "staging"], ["history", "--kind", "verify"], ["show", "4"]):
        as_json = json.loads(controller(config, *command, "--json").stdout)
        for flag in ("-o", "--format"):
            done = controller(config, *command, flag, "yaml")
            assert done.returncode == 0, done.stderr
            assert yaml.safe_load(done.stdout) == as_json, command
        assert json.loads(controller(config, *command, "-o", "json").stdout) == as_json
    assert controller(config, "status", "-o", "toml").returncode == 64
