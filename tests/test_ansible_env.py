"""The job environment: the repository's ansible.cfg wins, our fast defaults fill the gaps, no secrets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from controller.config import AnsibleConfig, Config, SourceConfig, SshConfig
from controller.runner import ansible_env


def config(tmp_path: Path, strategy: str = "auto") -> Config:
    return Config(source=SourceConfig("unused"), state_dir=str(tmp_path / "state"), workspace_dir="/dev/shm",
                  ssh=SshConfig("/keys/id", "/keys/known_hosts"), ansible=AnsibleConfig(strategy=strategy))


def test_defaults_apply_where_the_repository_is_silent(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text("[defaults]\nroles_path = roles\n")
    env = ansible_env(config(tmp_path), tmp_path, tmp_path / "scratch")
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert env["ANSIBLE_PIPELINING"] == "True"
    assert env["ANSIBLE_FORKS"] == "20"
    assert "ControlPersist=60s" in env["ANSIBLE_SSH_ARGS"]
    assert env["ANSIBLE_PRIVATE_KEY_FILE"] == "/keys/id"
    assert "UserKnownHostsFile=/keys/known_hosts" in env["ANSIBLE_SSH_COMMON_ARGS"]
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"  # mitogen is installed with the [fast] extra
    assert Path(env["ANSIBLE_STRATEGY_PLUGINS"], "mitogen_linear.py").exists()
    assert env["ANSIBLE_LOCAL_TEMP"] == str(tmp_path / "scratch")


def test_the_repository_ansible_cfg_wins(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\nforks = 3\nstrategy = free\nprivate_key_file = ~/.ssh/team\ncallbacks_enabled = timer\n"
        "[ssh_connection]\npipelining = False\nssh_args = -o ControlMaster=no\n")
    env = ansible_env(config(tmp_path), tmp_path, tmp_path)
    for key in ("ANSIBLE_FORKS", "ANSIBLE_STRATEGY", "ANSIBLE_PRIVATE_KEY_FILE", "ANSIBLE_PIPELINING",
                "ANSIBLE_SSH_ARGS", "ANSIBLE_STRATEGY_PLUGINS"):
        assert key not in env, key
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "timer,controller_unverified"


def test_linear_fallback_and_no_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY", "AGE-SECRET-KEY-1TESTVALUE")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example.invalid/secret")
    env = ansible_env(config(tmp_path, strategy="linear"), tmp_path, tmp_path)
    assert env["ANSIBLE_STRATEGY"] == "linear" and "ANSIBLE_STRATEGY_PLUGINS" not in env
    assert "SOPS_AGE_KEY" not in env and "SLACK_WEBHOOK_URL" not in env
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
