"""What an Ansible job is told: the bastion's safety settings over the repository, fast defaults under it.

The repository's ``ansible.cfg`` is reviewed code and wins for speed and behaviour (forks,
strategy, pipelining). It does not win where it would weaken what the bastion promises:
host keys are checked as ``ssh.host_key_checking`` says, and nothing writes the run's
output (diffs, secrets) to disk. Each such override is reported once per run.
"""

from __future__ import annotations

import configparser
import functools
import importlib.util
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from controller import memo
from controller.ansible.nodes import NodeAccess, node_access
from controller.ansible.playbook import CACHE as PARSED_CACHE
from controller.ansible.wrappers import TOOLS, option_args, write_wrappers
from controller.config import Config
from controller.errors import ControllerError
from controller.secrets.vault import vault_args
from controller.source.ansible_cfg import read_ansible_cfg
from controller.vocabulary import Reason

# What the job may take from the controller's own environment; everything else
# (SOPS_AGE_KEY, tokens, webhook secrets) stays out of the job and its artifacts.
PASSED_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSH_AUTH_SOCK")
PLUGINS = Path(__file__).parent / "plugins"
OUR_CALLBACKS = "controller_unverified,controller_connections"
HOST_KEY_OPTIONS = {
    "strict": ("StrictHostKeyChecking=yes",),
    "accept-new": ("StrictHostKeyChecking=accept-new",),
    "off": ("StrictHostKeyChecking=no",),
}
# Settings that would send a run's output, diffs and secrets included, to a persistent disk.
NO_OUTPUT_TO_DISK = {
    "ANSIBLE_LOG_PATH": "/dev/null",              # empty would mean the current directory
    "ANSIBLE_KEEP_REMOTE_FILES": "False",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_DEBUG": "False",
    "ANSIBLE_CACHE_PLUGIN": "memory",             # facts live for one ansible-playbook run, never on disk
}


@dataclass(frozen=True)
class Job:
    """How every ansible-playbook of a run is started, and which repository settings were overridden."""

    env: dict[str, str]
    args: tuple[str, ...]
    notices: tuple[str, ...]
    run_timeout: float              # seconds one playbook run (check or apply) may take as a whole
    forks: int = 50                 # as the repository's ansible.cfg (or else the bastion config) says
    nodes: NodeAccess | None = None  # execution nodes that run some groups' hosts (ansible/nodes.py)

    @property
    def cmdline(self) -> str:
        return shlex.join(self.args)


def job_settings(config: Config, project: Path, private: Path) -> Job:
    """The job for a checkout at ``project``; ``private`` is a 0700 tmpfs directory for this run."""
    repo = read_ansible_cfg(project)
    notices: list[str] = []
    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_")})
    env["PATH"] = f"{private / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("LANG", "C.UTF-8")
    scratch = _private_dir(private / "tmp")
    env.update({
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        # the template module renders files (secrets included) in the local temp dir
        "ANSIBLE_LOCAL_TEMP": str(scratch),
        "ANSIBLE_NOCOLOR": "1",
        # what every ansible-playbook parses as it starts, kept between runs (playbook.py)
        PARSED_CACHE: str(config.state_path / "cache"),
    })

    def default(section: str, key: str, var: str, value: str | None) -> None:
        if value is not None and not repo.has_option(section, key) and var not in env:
            env[var] = value

    settings = config.ansible
    default("defaults", "forks", "ANSIBLE_FORKS", str(settings.forks))
    default("defaults", "timeout", "ANSIBLE_TIMEOUT", str(round(settings.timeout)))
    default("defaults", "private_key_file", "ANSIBLE_PRIVATE_KEY_FILE", config.ssh.private_key_file)
    default("ssh_connection", "pipelining", "ANSIBLE_PIPELINING", str(settings.pipelining))
    if not repo.has_option("defaults", "strategy") and "ANSIBLE_STRATEGY" not in env:
        strategy, plugins = _strategy(config, "mitogen" if settings.cpu_pinning and settings.strategy == "auto"
                                      else settings.strategy, notices)
        env["ANSIBLE_STRATEGY"] = strategy
        if plugins:
            env.setdefault("ANSIBLE_STRATEGY_PLUGINS", plugins)
        if strategy == "controller_linear":  # which keeps mitogen's work on unchanged sources between runs here
            env["CONTROLLER_SOURCE_CACHE"] = str(config.state_path / "cache")
    # a host that stops answering must not hold the run (and the lock) for ever
    env["ANSIBLE_TASK_TIMEOUT"] = str(max(1, round(settings.task_timeout)))

    options = _host_key_args(config)
    host_keys, wrappers = _host_keys(config, repo, private, notices)
    env.update(host_keys)
    # ssh_args come first on ssh's, sftp's and scp's command lines, and ssh takes the first value given
    repo_ssh_args = repo.get("ssh_connection", "ssh_args", fallback=None)
    persist = f"-o ControlMaster=auto -o ControlPersist={round(settings.control_persist)}s -o BatchMode=yes"
    env["ANSIBLE_SSH_ARGS"] = " ".join((options, repo_ssh_args if repo_ssh_args is not None
                                        else env.get("ANSIBLE_SSH_ARGS", persist)))
    # ssh master sockets live in this run's private directory, never at a predictable shared path
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(_private_dir(private / "cp"))
    env.update(_no_output_to_disk(repo, notices))
    # extra vars beat inventory vars: a repository's ansible_ssh_executable cannot route around the wrappers
    extra = [("-e", f"ansible_{tool}_executable={path}") for tool, path in wrappers.items()]
    return Job(env, (*(arg for pair in extra for arg in pair), *vault_args(settings)), tuple(notices),
               settings.run_timeout, _forks(repo, env, settings.forks),
               node_access(config, project, private, PLUGINS, host_key_options(config)))


def _forks(repo: configparser.ConfigParser, env: dict[str, str], default: int) -> int:
    """The forks a playbook of this job gets: the repository's, the environment's, or the bastion's."""
    given = repo.get("defaults", "forks", fallback=None) or env.get("ANSIBLE_FORKS")
    try:
        return max(1, int(given)) if given else default
    except ValueError:  # Ansible refuses it with its own words
        return default


def host_key_options(config: Config) -> tuple[str, ...]:
    """ssh ``-o`` options that check host keys as the bastion says (Ansible's runs and verify's alike)."""
    known = "/dev/null" if config.ssh.host_key_checking == "off" else str(config.known_hosts)
    return (*HOST_KEY_OPTIONS[config.ssh.host_key_checking], f"UserKnownHostsFile={known}",
            "GlobalKnownHostsFile=/dev/null")


def writable_known_hosts(config: Config) -> None:
    """Under accept-new, refuse to run where ssh could not record the keys it meets.

    ssh then only warns and connects, so no key would ever be pinned and a changed one accepted
    (a unit's ProtectSystem= makes /etc read-only: keep known_hosts in state_dir, the default).
    """
    if config.ssh.host_key_checking != "accept-new":
        return
    known = config.known_hosts
    try:
        if not known.parent.exists():
            known.parent.mkdir(parents=True)
        with open(known, "a"):  # creates it empty if need be, as ssh would; changes nothing else
            pass
    except OSError as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"ssh.known_hosts_file {known} cannot be written "
                              f"({exc.strerror}): with ssh.host_key_checking accept-new no host key would be "
                              "recorded and a changed one accepted; make it writable (the default, known_hosts "
                              "in state_dir, is) or fill it in advance and use strict") from None


def _host_key_args(config: Config) -> str:
    return option_args(host_key_options(config))


def ssh_wrappers(config: Config, directory: Path, tools: Sequence[str] = TOOLS) -> dict[str, Path]:
    """``ssh`` (and ``sftp``, ``scp``) in ``directory`` that put the bastion's host-key options first, jump hosts
    included (wrappers.py says how)."""
    return write_wrappers(directory, host_key_options(config), tools)


def _host_keys(config: Config, repo: configparser.ConfigParser, private: Path,
               notices: list[str]) -> tuple[dict[str, str], dict[str, Path]]:
    """Host key checking as the bastion says, for Ansible's ssh connection and for mitogen alike.

    ansible-runner turns checking off unless the job says otherwise, and mitogen then uses
    /dev/null as known_hosts; the ssh wrappers (``ssh_wrappers``) hold whatever the repository
    or a strategy adds after the bastion's options, jump hosts included.
    """
    weakened = repo.get("defaults", "host_key_checking", fallback="true").strip().lower() in ("false", "no", "0")
    for key in ("ssh_args", "ssh_common_args", "ssh_extra_args"):
        value = repo.get("ssh_connection", key, fallback="")
        weakened = weakened or "stricthostkeychecking" in value.lower() or "userknownhostsfile" in value.lower()
    if weakened and config.ssh.host_key_checking != "off":
        notices.append(f"the repository's ansible.cfg turns host key checking off or changes it; ignored: "
                       f"ssh.host_key_checking is {config.ssh.host_key_checking} on this bastion")
    writable_known_hosts(config)
    # sftp and scp (the ssh connection's file transfers) take the same options, so they get wrappers too
    wrappers = ssh_wrappers(config, private / "bin")
    checking = "False" if config.ssh.host_key_checking == "off" else "True"
    env = {"ANSIBLE_HOST_KEY_CHECKING": checking,
           **{f"ANSIBLE_{tool.upper()}_EXECUTABLE": str(path) for tool, path in wrappers.items()}}
    return env, wrappers


def _no_output_to_disk(repo: configparser.ConfigParser, notices: list[str]) -> dict[str, str]:
    """Override every repository setting that would write the run's output to disk; only our callback runs."""
    overridden = [key for section, key, harmless in (
        ("defaults", "log_path", ""), ("defaults", "keep_remote_files", "false"),
        ("defaults", "callbacks_enabled", ""), ("defaults", "callback_whitelist", ""),
        ("defaults", "callback_plugins", ""), ("defaults", "fact_caching", "memory"),
    ) if repo.get(section, key, fallback=harmless).strip().lower() not in (harmless, "")]
    if overridden:
        notices.append(f"the repository's ansible.cfg sets {', '.join(overridden)}; ignored: no run output "
                       "(diffs, secrets) may be written to disk or to other callbacks")
    return {**NO_OUTPUT_TO_DISK, "ANSIBLE_CALLBACKS_ENABLED": OUR_CALLBACKS,
            "ANSIBLE_CALLBACK_PLUGINS": str(PLUGINS / "callback")}


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def mitogen_refused(config: Config) -> str | None:
    """Why mitogen cannot run here (not installed, or refused by this ansible-core), or None when it can.

    Importing it costs the run about 0.4 s, so a load that worked is remembered for the same
    Python, ansible-core and mitogen at the same place.
    """
    key = _mitogen_install()
    if key is not None and memo.known(config, "mitogen-loads", key):
        return None
    refused = _import_mitogen()
    if refused is None and key is not None:
        memo.remember(config, "mitogen-loads", key)
    return refused


@functools.cache
def _import_mitogen() -> str | None:
    try:
        # Ansible's plugin loaders warn of deprecations in libraries they import (cryptography's DSA): the
        # playbook, not the controller, is the place for them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import ansible_mitogen.loaders
            import ansible_mitogen.strategy  # noqa: F401
    except Exception as exc:  # mitogen refuses unsupported ansible-core versions with its own errors
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'cannot be imported'}"[:200]
    return None


def _mitogen_install() -> str | None:
    """What decides whether mitogen loads: this Python, the ansible-core and mitogen installed, and where."""
    try:
        spec = importlib.util.find_spec("ansible_mitogen")
        if spec is None or spec.origin is None:
            return None
        files = [Path(spec.origin), *Path(spec.origin).parent.glob("*.py")]
        return repr((sys.version, version("ansible-core"), version("mitogen"),
                     sorted((str(f), f.stat().st_mtime_ns) for f in files)))
    except (ImportError, OSError, PackageNotFoundError):  # not installed as a distribution: always import
        return None


def _strategy(config: Config, setting: str, notices: list[str]) -> tuple[str, str | None]:
    """The strategy to run, and the directory its plugin lives in (None: one that ships with Ansible)."""
    if setting in ("linear", "free"):
        return setting, None
    refused = mitogen_refused(config)
    if refused is None:
        if setting == "mitogen":
            spec = importlib.util.find_spec("ansible_mitogen")
            assert spec is not None and spec.origin is not None
            return "mitogen_linear", str(Path(spec.origin).parent / "plugins" / "strategy")
        return "controller_linear", str(PLUGINS / "strategy")
    if setting == "mitogen":
        raise ControllerError(Reason.CONFIG_INVALID, f"ansible.strategy is mitogen, but mitogen cannot run: {refused}")
    notices.append(f"mitogen cannot run here ({refused}); falling back to the linear strategy with pipelining "
                   "and ControlPersist, several times slower")
    return "linear", None
