"""Bad input in the bastion config and in gitops.yml: one line naming the file, exit 1, never a traceback.

In-process through the loaders (load_config, load_apps), plus the command line once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.config import HostPort, load_config
from controller.errors import ControllerError
from controller.source.apps import load_apps
from controller.vocabulary import Reason
from controller.web.access import Access
from tests.conftest import BIN

NOT_UTF8 = b"source: {url: /srv/git/fleet.git}\nstate_dir: /var/lib/caf\xe9\n"  # Latin-1, as an old editor saves
WHERE = f"byte 0xe9 at offset {NOT_UTF8.index(0xe9)}"


def refusal(call: object, *args: object) -> str:
    """The one-line message of the ConfigInvalid error that ``call(*args)`` raises."""
    with pytest.raises(ControllerError) as raised:
        call(*args)  # type: ignore[operator]
    assert raised.value.reason is Reason.CONFIG_INVALID
    assert "\n" not in raised.value.message, raised.value.message
    return raised.value.message


def test_a_config_that_is_not_utf8_text_or_not_text_at_all_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    config.write_bytes(NOT_UTF8)
    assert refusal(load_config, config) == \
        f"{config}: configuration file is not UTF-8 text ({WHERE})"
    config.write_bytes(Path("/usr/bin/true").read_bytes()[:4096])  # a binary put there by mistake
    assert refusal(load_config, config).startswith(f"{config}: configuration file is not UTF-8 text")
    config.write_bytes(b"source: {url: x}\n\x00\x01\x02")  # valid UTF-8, but control characters
    assert refusal(load_config, config) == \
        f"{config}: configuration file is not YAML text (special characters are not allowed)"


def test_a_state_dir_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    (tmp_path / "a-file").write_text("")
    config.write_text("source: {url: x}\nstate_dir: a-file/state\n")
    assert refusal(load_config, config) == (f"{config}: state_dir: {tmp_path}/a-file is a file, not a directory "
                                            f"(state_dir is {tmp_path}/a-file/state)")
    config.write_text("source: {url: x}\nstate_dir: a-file\n")
    assert refusal(load_config, config) == f"{config}: state_dir: {tmp_path}/a-file is a file, not a directory"
    config.write_text("source: {url: x}\nstate_dir: not/yet/there\n")
    assert load_config(config).state_dir == f"{tmp_path}/not/yet/there"  # made at the first run


def test_gitops_yml_errors_name_gitops_yml_not_the_workspace(tmp_path: Path) -> None:
    project = tmp_path / "controller-1234-abcd" / "project"
    project.mkdir(parents=True)
    (project / "gitops.yml").write_bytes(b"apps:\n  - name: caf\xe9\n")
    assert refusal(load_apps, project) == "gitops.yml: list of apps is not UTF-8 text (byte 0xe9 at offset 19)"
    (project / "gitops.yml").write_text("apps:\n  - name: web\n    playbook: [site.yml\n")
    message = refusal(load_apps, project)
    assert message.startswith("gitops.yml: line 4: ") and str(tmp_path) not in message, message


def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    cases = {
        "source: {url: x, branchh: main}\n": "source.branchh: unknown key",
        "source: {url: x, branch: 3}\n": "source.branch: expected a string, got a whole number",
        "state_dir: /tmp\n": "source: missing required key",
        "source: {url: x}\nansible: {forks: many}\n": "ansible.forks: expected a whole number",
        "source: [\n": "controller.yml: line",
        "source: {url: x}\nwatch: {listen: localhost}\n": "watch.listen: expected HOST:PORT",
        "source: {url: x}\nwatch: {drift_check_cron: 'every day'}\n": "watch.drift_check_cron: not a cron",
        "source: {url: x}\nwatch: {poll_interval: -1}\n": "watch.poll_interval: must not be negative",
        "source: {url: x}\nnotify: [{format: json}]\n": "notify[0]: set exactly one of url and url_file",
        "source: {url: x}\nnotify: [{url: 'http://x', events: [boom]}]\n":
            "notify[0].events[0]: must be one of drift-found, drift-corrected",
        "source: {url: x}\nwatch: {poll_interval: 5 minutes}\n":
            "watch.poll_interval: expected a duration such as 30, 30s, 5m or 1h30m, got '5 minutes'",
        "source: {url: x}\nssh: {host_key_checking: maybe}\n": "ssh.host_key_checking: must be one of",
        "source: {url: x}\nwatch: {backoff: .nan}\n": "watch.backoff: expected a duration",
        "source: {url: x}\nwatch: {debounce: -1s}\n": "watch.debounce: expected a duration",
        "source: {url: x, fetch_timeout: -5}\n": "source.fetch_timeout: must not be negative",
        "source: {url: x}\nansible: {control_persist: 0}\n": "ansible.control_persist: must be at least 1s",
        "source: {url: x}\nwatch: {webhooks: [{provider: bitbucket, secret_file: s}]}\n":
            "watch.webhooks[0].provider: must be one of github, gitlab, gitea, gogs, bitbucket-server",
        "source: {url: x}\nnotify: [{format: github, url: 'https://api.github.com', repository: a/b}]\n":
            "notify[0]: token_file: required for github commit statuses",
        "source: {url: x}\nnotify: [{url: 'http://x', token_file: t}]\n": "notify[0]: token_file: only for commit",
        "source: {url: x}\nui: {external_url: controller.example.com}\n": "ui.external_url: expected the dashboard",
        "source: {url: x, commit_url: 'https://github.com/o/r/commit/'}\n": "source.commit_url: expected a web "
                                                                            "address with {sha}",
        "source: {url: x}\nretention: {max_age: 30m}\n": "retention: keep at least 1h and 100 runs (max_age: 1800s",
        "source: {url: x}\nretention: {max_runs: 10}\n": "retention: keep at least 1h and 100 runs",
        "source: {url: x}\nretention: {max_age: a week}\n": "retention.max_age: expected a duration",
        "source: {url: x}\nexecution_nodes: [{name: dc2, ssh: deploy@10.1.2.3}]\n":
            "execution_nodes[0].groups: missing required key",
        "source: {url: x}\nexecution_nodes: [{name: dc2, ssh: deploy@10.1.2.3, groups: []}]\n":
            "execution_nodes[0]: groups: name the inventory groups it serves",
        "source: {url: x}\nexecution_nodes: [{name: a, ssh: n1, groups: [dc2]}, {name: b, ssh: n2, groups: [dc2]}]\n":
            "execution_nodes[1]: groups: dc2 is served by a already",
        "source: {url: x}\nexecution_nodes: [{name: a, ssh: n1, groups: [x]}, {name: a, ssh: n2, groups: [y]}]\n":
            "execution_nodes[1]: name: 'a' must be unique",
        "source: {url: x}\nexecution_nodes: [{name: a, ssh: -oProxyCommand=x, groups: [x]}]\n":
            "execution_nodes[0]: ssh: expected user@address",
        "source: {url: x}\nexecution_nodes: [{name: a, ssh: n1, groups: [x], workspace_dir: shm}]\n":
            "execution_nodes[0]: workspace_dir: an absolute path on the node",
    }
    for text, needle in cases.items():
        config.write_text(text)
        message = refusal(load_config, config)
        assert needle in message and message.startswith(f"{config}: "), (text, message)


def test_the_command_line_says_it_in_one_line_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    config.write_bytes(NOT_UTF8)
    done = subprocess.run([str(BIN / "controller"), "check", "--config", str(config)], capture_output=True,
                          text=True, check=False, env={**os.environ, "CONTROLLER_CONFIG": ""})
    assert done.returncode == 1
    assert done.stderr == f"controller: {config}: configuration file is not UTF-8 text ({WHERE})\n"
    config.write_text(f"source: {{url: x}}\nstate_dir: {tmp_path}/state\nansible: {{forks: many}}\n")
    refused = subprocess.run([str(BIN / "controller"), "sync", "--config", str(config)], capture_output=True,
                             text=True, check=False, env={**os.environ, "CONTROLLER_CONFIG": ""})
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "ansible.forks: expected a whole number" in refused.stderr
    assert not (tmp_path / "state").exists()  # nothing ran, nothing was recorded
    env = {k: v for k, v in os.environ.items() if k != "CONTROLLER_CONFIG"}
    nowhere = subprocess.run([str(BIN / "controller"), "check", "--config", str(tmp_path / "nope.yml")],
                             capture_output=True, text=True, check=False, env=env)
    assert nowhere.returncode == 1 and f"{tmp_path}/nope.yml: configuration file not found" in nowhere.stderr
    before = subprocess.run([str(BIN / "controller"), "--config", str(tmp_path / "nope.yml"), "status"],
                            capture_output=True, text=True, check=False, env=env)  # before the command too
    assert before.returncode == 1 and before.stderr == nowhere.stderr


def test_every_problem_of_a_config_is_said_at_once_with_the_value(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    config.write_text("source: {url: x, branch: 3, bogus: 1}\nansible: {forks: many}\n"
                      "watch: {poll_interval: 5 minutes, listen: localhost}\n"
                      "notify: [{url: 'http://x', events: [boom]}]\n")
    done = subprocess.run([str(BIN / "controller"), "--config", str(config), "status"], capture_output=True,
                          text=True, check=False, env={**os.environ, "CONTROLLER_CONFIG": ""})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"controller: {config}: {problem}" for problem in (
        "source.bogus: unknown key (expected one of: branch, commit_url, fetch_timeout, url, verify)",
        "source.branch: expected a string, got a whole number (3)",
        "ansible.forks: expected a whole number, got a string ('many')",
        "watch.poll_interval: expected a duration such as 30, 30s, 5m or 1h30m, got '5 minutes'",
        "watch.listen: expected HOST:PORT such as 127.0.0.1:8080, got 'localhost'",
        "notify[0].events[0]: must be one of drift-found, drift-corrected, revision-applied, run-failed, recovered, "
        "verification-failed, health-degraded, health-recovered, approval-required, got 'boom'")]


def test_named_dashboard_tokens_are_refused_in_one_line_when_they_cannot_tell_holders_apart(tmp_path: Path) -> None:
    (tmp_path / "a.token").write_text("alice-s-own-dashboard-token-0123\n")
    (tmp_path / "b.token").write_text("bob-s-own-dashboard-token-012345\n")
    (tmp_path / "short.token").write_text("short\n")
    config = tmp_path / "controller.yml"
    listen = HostPort("0.0.0.0", 8080)

    def ui(**keys: object) -> str:
        config.write_text(yaml.safe_dump({"source": {"url": "/srv/git/fleet.git"}, "ui": keys}))
        return refusal(lambda: Access.of(load_config(config).ui, listen))

    assert ui(tokens=[{"name": "alice smith", "file": "a.token"}]) == (
        f"{config}: ui.tokens[0].name: 'alice smith': letters, digits, '.', '_', '-' and '@' only (it names the "
        "holder in the audit trail)")
    assert ui(tokens=[{"name": "alice", "file": "a.token"}, {"name": "alice", "file": "b.token"}]) == (
        f"{config}: ui.tokens[1].name: 'alice' is named twice")
    assert ui(tokens=[{"name": "alice", "file": "a.token"}, {"name": "bob", "file": "a.token"}]) == (
        "ui.tokens[1].file: 'bob' holds alice's token too: give each holder a name and a token of their own")
    assert ui(token_file="b.token", tokens=[{"name": "dashboard", "file": "a.token"}]) == (
        "ui.tokens[0].file: 'dashboard' holds the name of ui.token_file's holder: give each holder a name and a "
        "token of their own")
    assert ui(tokens=[{"name": "bob", "file": "short.token"}]) == (
        f"ui.tokens[0].file {tmp_path / 'short.token'} holds a token of 5 characters; use at least 16 (openssl "
        "rand -hex 32)")
    assert ui(tokens=[{"name": "bob", "file": "b.token", "read_only": "sometimes"}]).startswith(
        f"{config}: ui.tokens[0].read_only: ")
    config.write_text(yaml.safe_dump({"source": {"url": "/srv/git/fleet.git"}, "ui": {"tokens": [
        {"name": "alice", "file": "a.token"}, {"name": "grafana", "file": "b.token", "read_only": True}]}}))
    holders = Access.of(load_config(config).ui, listen).holders
    assert [(h.name, h.read_only) for h in holders] == [("alice", False), ("grafana", True)]
