"""The job's settings: the repository's ansible.cfg wins for speed, never for host keys or output to disk."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from controller.ansible.job import job_settings
from controller.config import AnsibleConfig, Config, SourceConfig, SshConfig


def config(tmp_path: Path, strategy: str = "auto", checking: str = "accept-new", pinning: bool = False) -> Config:
    return Config(source=SourceConfig("unused"), state_dir=str(tmp_path / "state"), workspace_dir="/dev/shm",
                  ssh=SshConfig("/keys/id", str(tmp_path / "known_hosts"), checking),
                  ansible=AnsibleConfig(strategy=strategy, task_timeout=42, cpu_pinning=pinning))


def private(tmp_path: Path) -> Path:
    path = tmp_path / "job"
    path.mkdir(mode=0o700)
    return path


def test_defaults_apply_where_the_repository_is_silent(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\nroles_path = roles\n")
    job = job_settings(config(tmp_path), tmp_path, private(tmp_path))
    env = job.env
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert env["ANSIBLE_PIPELINING"] == "True"
    assert env["ANSIBLE_FORKS"] == "50"
    assert "ControlPersist=60s" in env["ANSIBLE_SSH_ARGS"]
    assert env["ANSIBLE_PRIVATE_KEY_FILE"] == "/keys/id"
    assert env["ANSIBLE_STRATEGY"] == "controller_linear"  # mitogen, a dependency, with CPU placement unpinned
    assert Path(env["ANSIBLE_STRATEGY_PLUGINS"], "controller_linear.py").exists()
    assert env["CONTROLLER_SOURCE_CACHE"] == str(tmp_path / "state" / "cache")  # what it keeps between runs
    assert env["ANSIBLE_LOCAL_TEMP"] == str(tmp_path / "job" / "tmp")
    assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(tmp_path / "job" / "cp")  # private, per run
    assert env["ANSIBLE_TASK_TIMEOUT"] == "42"
    assert job.notices == ()


def test_host_keys_are_checked_whatever_the_repository_says(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nhost_key_checking = False\n"
        "[ssh_connection]\nssh_args = -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\n")
    job = job_settings(config(tmp_path), tmp_path, private(tmp_path))
    assert job.env["ANSIBLE_HOST_KEY_CHECKING"] == "True"  # ansible-runner would set False otherwise
    known = f"UserKnownHostsFile={tmp_path / 'known_hosts'}"
    # ssh keeps the first value of an option: ours come before the repository's
    args = job.env["ANSIBLE_SSH_ARGS"]
    assert args.index("StrictHostKeyChecking=accept-new") < args.index("StrictHostKeyChecking=no")
    assert args.index(known) < args.index("UserKnownHostsFile=/dev/null")
    wrapper = Path(job.env["ANSIBLE_SSH_EXECUTABLE"])  # what mitogen runs, with its own options after ours
    # the real ssh, started as plain "ssh" so that a jump host's ssh is this wrapper again (PATH)
    assert wrapper.read_text().startswith(f"#!{shutil.which('bash')}\nexec -a ssh {shutil.which('ssh')} "
                                          "-o StrictHostKeyChecking=accept-new")
    assert job.env["PATH"].split(":")[0] == str(wrapper.parent)
    assert f"ansible_ssh_executable={wrapper}" in job.cmdline  # extra vars beat inventory vars
    for tool in ("sftp", "scp"):  # the ssh connection's file transfers
        transfer = Path(job.env[f"ANSIBLE_{tool.upper()}_EXECUTABLE"])
        assert f"exec -a {tool} {shutil.which(tool)} -o StrictHostKeyChecking=accept-new" in transfer.read_text()
        assert f"ansible_{tool}_executable={transfer}" in job.cmdline
    [notice] = job.notices
    assert "host key checking" in notice and "accept-new" in notice


@pytest.mark.parametrize(("checking", "option"), [("strict", "StrictHostKeyChecking=yes"),
                                                  ("off", "StrictHostKeyChecking=no")])
def test_the_bastion_chooses_how_strict(tmp_path: Path, checking: str, option: str) -> None:
    (tmp_path / "ansible.cfg").write_text("")
    job = job_settings(config(tmp_path, checking=checking), tmp_path, private(tmp_path))
    assert job.env["ANSIBLE_SSH_ARGS"].startswith(f"-o {option}")
    assert job.env["ANSIBLE_HOST_KEY_CHECKING"] == ("False" if checking == "off" else "True")


def test_the_repository_cannot_send_output_to_disk(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nlog_path = /var/log/ansible.log\ncallbacks_enabled = community.general.log_plays, junit\n"
        "keep_remote_files = True\nfact_caching = jsonfile\n")
    job = job_settings(config(tmp_path), tmp_path, private(tmp_path))
    env = job.env
    assert env["ANSIBLE_LOG_PATH"] == "/dev/null"
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "controller_unverified,controller_connections"
    assert env["ANSIBLE_KEEP_REMOTE_FILES"] == "False"
    assert env["ANSIBLE_CACHE_PLUGIN"] == "memory"
    [notice] = job.notices
    assert "log_path, keep_remote_files, callbacks_enabled, fact_caching" in notice


def test_the_repository_ansible_cfg_wins_for_speed(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nforks = 3\nstrategy = free\nprivate_key_file = ~/.ssh/team\n"
        "[ssh_connection]\npipelining = False\nssh_args = -o ControlMaster=no\n")
    env = job_settings(config(tmp_path), tmp_path, private(tmp_path)).env
    for key in ("ANSIBLE_FORKS", "ANSIBLE_STRATEGY", "ANSIBLE_PRIVATE_KEY_FILE", "ANSIBLE_PIPELINING",
                "ANSIBLE_STRATEGY_PLUGINS"):
        assert key not in env, key
    assert env["ANSIBLE_SSH_ARGS"].endswith("-o ControlMaster=no")


def test_linear_fallback_and_no_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY", "AGE-SECRET-KEY-1TESTVALUE")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example.invalid/secret")
    job = private(tmp_path)
    env = job_settings(config(tmp_path, strategy="linear"), tmp_path, job).env
    assert env["ANSIBLE_STRATEGY"] == "linear" and "ANSIBLE_STRATEGY_PLUGINS" not in env
    assert "CONTROLLER_SOURCE_CACHE" not in env
    assert "SOPS_AGE_KEY" not in env and "SLACK_WEBHOOK_URL" not in env
    # the ssh wrappers (a jump host's ssh finds them), then this Python's tools
    assert env["PATH"].split(":")[:2] == [str(job / "bin"), str(Path(sys.executable).parent)]


def test_cpu_pinning_means_mitogens_own_strategy(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("")
    env = job_settings(config(tmp_path, pinning=True), tmp_path, private(tmp_path)).env
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    assert Path(env["ANSIBLE_STRATEGY_PLUGINS"], "mitogen_linear.py").exists()
    assert "CONTROLLER_SOURCE_CACHE" not in env  # mitogen's own strategy keeps nothing between runs
