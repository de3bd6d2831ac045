"""The bastion's configuration: where Git is, where keys and state live, how to run Ansible."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from controller.errors import ControllerError
from controller.outcomes import Reason
from controller.schema import build, read_yaml

SEARCH_PATH = (Path("controller.yml"), Path("/etc/controller/controller.yml"))


@dataclass(frozen=True)
class SourceConfig:
    """The Git repository and branch that hold the desired state."""

    url: str
    branch: str = "main"
    fetch_timeout: int = 120


@dataclass(frozen=True)
class SopsConfig:
    """How SOPS files are decrypted."""

    age_key_file: str | None = None


@dataclass(frozen=True)
class SshConfig:
    """How the bastion reaches its servers, when the repository's ansible.cfg does not say."""

    private_key_file: str | None = None
    known_hosts_file: str | None = None


@dataclass(frozen=True)
class AnsibleConfig:
    """Speed settings; each applies only where the repository's ansible.cfg does not set it."""

    forks: int = 20
    strategy: str = "auto"          # auto: mitogen_linear when mitogen is installed, else linear
    pipelining: bool = True
    control_persist: int = 60       # seconds an idle SSH master connection is kept
    timeout: int = 10               # SSH connect timeout, seconds


@dataclass(frozen=True)
class Config:
    """The whole bastion configuration, paths made absolute relative to the file."""

    source: SourceConfig
    state_dir: str = "/var/lib/controller"
    workspace_dir: str = "/dev/shm"
    sops: SopsConfig = field(default_factory=SopsConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    ansible: AnsibleConfig = field(default_factory=AnsibleConfig)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


STRATEGIES = ("auto", "mitogen", "linear", "free")


def find_config(explicit: str | None) -> Path:
    """The config file: --config, else $CONTROLLER_CONFIG, else ./controller.yml, else /etc/controller."""
    if explicit:
        return Path(explicit)
    if os.environ.get("CONTROLLER_CONFIG"):
        return Path(os.environ["CONTROLLER_CONFIG"])
    for candidate in SEARCH_PATH:
        if candidate.exists():
            return candidate
    raise ControllerError(Reason.CONFIG_INVALID,
                          "no configuration: pass --config, set CONTROLLER_CONFIG, or create "
                          "./controller.yml or /etc/controller/controller.yml")


def load_config(path: Path) -> Config:
    """Read and validate the bastion config file."""
    config = build(Config, read_yaml(path, "configuration file"), file=path)
    if config.ansible.strategy not in STRATEGIES:
        raise ControllerError(Reason.CONFIG_INVALID,
                              f"{path}: ansible.strategy: must be one of {', '.join(STRATEGIES)}")
    if config.ansible.forks < 1:
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ansible.forks: must be at least 1")
    base = path.resolve().parent

    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / os.path.expanduser(value)).resolve())

    url = config.source.url
    if "://" not in url and ":" not in url.split("/")[0] and not url.startswith("/"):
        url = str(absolute(url))  # a relative local path
    return replace(
        config,
        source=replace(config.source, url=url),
        state_dir=str(absolute(config.state_dir)),
        workspace_dir=str(absolute(config.workspace_dir)),
        sops=SopsConfig(absolute(config.sops.age_key_file)),
        ssh=SshConfig(absolute(config.ssh.private_key_file), absolute(config.ssh.known_hosts_file)),
    )
