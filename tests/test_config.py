"""Bad input in the bastion config and in gitops.yml: one line naming the file, exit 1, never a traceback.

In-process through the loaders (load_config, load_apps), plus the command line once.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from controller.config import load_config
from controller.errors import ControllerError
from controller.source.apps import load_apps
from controller.vocabulary import Reason
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


def test_the_command_line_says_it_in_one_line_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    config.write_bytes(NOT_UTF8)
    done = subprocess.run([str(BIN / "controller"), "check", "--config", str(config)], capture_output=True,
                          text=True, check=False, env={**os.environ, "CONTROLLER_CONFIG": ""})
    assert done.returncode == 1
    assert done.stderr == f"controller: {config}: configuration file is not UTF-8 text ({WHERE})\n"
