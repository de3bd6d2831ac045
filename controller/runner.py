"""The one wrapper around ansible-runner and ansible-playbook: typed results, no raw events."""

from __future__ import annotations

import configparser
import difflib
import hashlib
import importlib.util
import os
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ansible_runner.config.runner import RunnerConfig
from ansible_runner.runner import Runner

from controller.apps import App
from controller.config import Config
from controller.errors import ControllerError
from controller.interrupt import Cancel
from controller.outcomes import Reason
from controller.process import run
from controller.redact import Redactor

# What ansible-runner may take from the controller's own environment; everything else
# (SOPS_AGE_KEY, tokens, webhook secrets) stays out of the job and its artifacts.
PASSED_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSH_AUTH_SOCK")

STATUSES = ("ok", "changed", "failed", "unreachable", "skipped", "unverified")
PLUGINS = Path(__file__).parent / "ansible_plugins"
UNVERIFIED_MARKER = "CONTROLLER-UNVERIFIED"


@dataclass(frozen=True)
class TaskResult:
    """One task on one host; ``unverified`` means check mode could not tell (command, no check support)."""

    host: str
    task: str
    action: str
    status: str
    diff: str = ""
    message: str = ""


@dataclass(frozen=True)
class HostSummary:
    """Per-host counts from Ansible's play recap."""

    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class PlayRun:
    """The typed result of one ansible-runner run; ok tasks are counted, not kept."""

    check: bool
    status: str
    rc: int
    tasks: tuple[TaskResult, ...]
    hosts: tuple[HostSummary, ...]
    error: str = ""


def ansible_env(config: Config, project: Path, scratch: Path) -> dict[str, str]:
    """The job's environment: the repository's ansible.cfg wins, our fast defaults fill the gaps."""
    settings = config.ansible
    repo_cfg = configparser.ConfigParser(interpolation=None)
    cfg_path = project / "ansible.cfg"
    try:
        repo_cfg.read(cfg_path)
    except configparser.Error as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"ansible.cfg: {exc.message.splitlines()[0]}") from exc

    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_")})
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("LANG", "C.UTF-8")
    env.update({
        "ANSIBLE_CONFIG": str(cfg_path),
        # the template module renders files (secrets included) in the local temp dir
        "ANSIBLE_LOCAL_TEMP": str(scratch),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
    })

    def default(section: str, key: str, var: str, value: str | None) -> None:
        if value is not None and not repo_cfg.has_option(section, key) and var not in env:
            env[var] = value

    control_dir = control_path_dir(config)
    default("defaults", "forks", "ANSIBLE_FORKS", str(settings.forks))
    default("defaults", "timeout", "ANSIBLE_TIMEOUT", str(settings.timeout))
    default("defaults", "private_key_file", "ANSIBLE_PRIVATE_KEY_FILE", config.ssh.private_key_file)
    default("ssh_connection", "pipelining", "ANSIBLE_PIPELINING", str(settings.pipelining))
    default("ssh_connection", "control_path_dir", "ANSIBLE_SSH_CONTROL_PATH_DIR", str(control_dir))
    default("ssh_connection", "ssh_args", "ANSIBLE_SSH_ARGS",
            f"-o ControlMaster=auto -o ControlPersist={settings.control_persist}s -o BatchMode=yes")
    if config.ssh.known_hosts_file:
        default("ssh_connection", "ssh_common_args", "ANSIBLE_SSH_COMMON_ARGS",
                f"-o UserKnownHostsFile={config.ssh.known_hosts_file}")
    # our callback marks tasks that check mode skipped; added to whatever the repository enables
    enabled = repo_cfg.get("defaults", "callbacks_enabled", fallback="")
    env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(filter(None, (enabled, "controller_unverified")))
    env["ANSIBLE_CALLBACK_PLUGINS"] = ":".join(filter(None, (
        repo_cfg.get("defaults", "callback_plugins", fallback=""), str(PLUGINS / "callback"))))
    strategy = _strategy(settings.strategy)
    if strategy == "mitogen_linear" and not repo_cfg.has_option("defaults", "strategy"):
        env.setdefault("ANSIBLE_STRATEGY_PLUGINS", str(mitogen_strategy_dir()))
    default("defaults", "strategy", "ANSIBLE_STRATEGY", strategy)
    return env


def control_path_dir(config: Config) -> Path:
    """A short per-state-dir directory for SSH master sockets (socket paths are limited to 108 bytes)."""
    digest = hashlib.sha256(config.state_dir.encode()).hexdigest()[:10]
    path = Path(config.workspace_dir) / f"controller-cp-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def mitogen_strategy_dir() -> Path | None:
    """Where mitogen's strategy plugins are, when mitogen is installed."""
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "plugins" / "strategy"


def _strategy(setting: str) -> str:
    if setting == "mitogen" or (setting == "auto" and mitogen_strategy_dir() is not None):
        if mitogen_strategy_dir() is None:
            raise ControllerError(Reason.CONFIG_INVALID,
                                  "ansible.strategy is mitogen but mitogen is not installed (pip install mitogen)")
        return "mitogen_linear"
    return "linear" if setting == "auto" else setting


def syntax_check(app: App, project: Path, env: Mapping[str, str], redactor: Redactor) -> None:
    """``ansible-playbook --syntax-check`` of the app's playbook; raise SyntaxCheckFailed with the cause."""
    try:
        run(["ansible-playbook", "--syntax-check", "-i", app.inventory, app.playbook],
            reason=Reason.SYNTAX_CHECK_FAILED, what=f"app {app.name}: {app.playbook} failed the syntax check",
            env=env, cwd=project, redact=lambda text: _relative(redactor.text(text), project),
            timeout=300)
    except ControllerError as exc:
        raise ControllerError(exc.reason, exc.message) from None


def run_playbook(app: App, project: Path, private_dir: Path, env: Mapping[str, str], *, check: bool,
                 redactor: Redactor, on_task: Callable[[TaskResult], None], cancel: Cancel) -> PlayRun:
    """Run the app's playbook in check+diff or apply mode, streaming each task result to ``on_task``."""
    collector = _Collector(check=check, redactor=redactor, project=project, on_task=on_task)
    config = RunnerConfig(
        private_data_dir=str(private_dir),
        project_dir=str(project),
        playbook=app.playbook,
        inventory=str(project / app.inventory),
        limit=app.limit,
        cmdline="--check --diff" if check else "--diff",
        envvars=dict(env),
        ident="check" if check else "apply",
        quiet=True,
        suppress_output_file=True,
        suppress_ansible_output=True,
    )
    config.prepare()
    # ansible-runner seeds the job env from os.environ and stores it in the "command" artifact
    config.env = {k: v for k, v in config.env.items() if k not in os.environ or k in env}
    runner = Runner(config, event_handler=collector.handle, cancel_callback=cancel)
    with cancel.deferred():
        runner.run()
    if cancel():
        raise ControllerError(Reason.INTERRUPTED, f"app {app.name}: interrupted, the playbook was stopped")
    if collector.stats is None:
        detail = " ".join(collector.tail) or f"ansible-runner ended {runner.status} (rc {runner.rc})"
        raise ControllerError(Reason.RUNNER_FAILED, f"app {app.name}: {detail}")
    return PlayRun(check=check, status=str(runner.status), rc=int(runner.rc or 0),
                   tasks=tuple(collector.tasks), hosts=collector.stats)


class _Collector:
    """Turns ansible-runner events into TaskResults as they stream; keeps no raw event."""

    def __init__(self, *, check: bool, redactor: Redactor, project: Path,
                 on_task: Callable[[TaskResult], None]) -> None:
        self.check = check
        self.redactor = redactor
        self.project = project
        self.on_task = on_task
        self.tasks: list[TaskResult] = []
        self.skipped: dict[tuple[str, str], int] = {}  # (host, task uuid) -> index in tasks
        self.stats: tuple[HostSummary, ...] | None = None
        self.tail: deque[str] = deque(maxlen=3)

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_stats":
            self.stats = _summaries(data)
        elif kind in _STATUS_OF:
            result = self._result(kind, data)
            if result.status == "skipped":
                self.skipped[(result.host, str(data.get("task_uuid")))] = len(self.tasks)
            if result.status != "ok":
                self.tasks.append(result)
            self.on_task(result)
        elif kind == "verbose" and event.get("stdout", "").startswith(UNVERIFIED_MARKER):
            _, host, uuid = event["stdout"].strip().split("\t")
            index = self.skipped.pop((host, uuid), None)
            if index is not None:
                self.tasks[index] = replace(self.tasks[index], status="unverified")
        elif kind == "verbose" and "ERROR" in event.get("stdout", ""):
            self.tail.append(_relative(self.redactor.text(event["stdout"].strip()), self.project))
        return False  # never write job_events to disk: they hold diffs and secrets

    def _result(self, kind: str, data: dict[str, Any]) -> TaskResult:
        res = data.get("res") or {}
        status = _STATUS_OF[kind]
        if status == "ok" and res.get("changed"):
            status = "changed"
        elif status == "failed" and data.get("ignore_errors"):
            status = "ok"
        message = "" if status in ("ok", "changed") else str(res.get("msg", ""))
        task = data.get("task", "")
        return TaskResult(
            host=str(data.get("host", "")),
            task=f"{data['role']} : {task}" if data.get("role") else str(task),
            action=str(data.get("task_action", "")),
            status=status,
            diff=self.redactor.text(render_diff(res)) if status == "changed" else "",
            message=_relative(self.redactor.text(message), self.project)[:2000],
        )


_STATUS_OF = {"runner_on_ok": "ok", "runner_on_failed": "failed",
              "runner_on_unreachable": "unreachable", "runner_on_skipped": "skipped"}


def _summaries(stats: dict[str, Any]) -> tuple[HostSummary, ...]:
    hosts: set[str] = set()
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):
        hosts.update((stats.get(key) or {}).keys())

    def count(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    return tuple(HostSummary(host, count("ok", host), count("changed", host), count("failures", host),
                             count("dark", host), count("skipped", host)) for host in sorted(hosts))


def render_diff(res: Mapping[str, Any]) -> str:
    """A unified diff of a task result's ``diff`` entries (loop items included)."""
    entries: list[Any] = []
    for source in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
        diff = source.get("diff")
        entries.extend(diff if isinstance(diff, list) else [diff] if diff else [])
    return "".join(_one_diff(entry) for entry in entries if isinstance(entry, dict))


def _one_diff(entry: Mapping[str, Any]) -> str:
    if entry.get("prepared"):
        return str(entry["prepared"]).rstrip("\n") + "\n"
    before, after = entry.get("before", ""), entry.get("after", "")
    if isinstance(before, dict) or isinstance(after, dict):
        before_d = before if isinstance(before, dict) else {}
        after_d = after if isinstance(after, dict) else {}
        path = after_d.get("path") or before_d.get("path") or ""
        return "".join(f"{path}: {key}: {before_d.get(key)} -> {after_d.get(key)}\n"
                       for key in sorted(set(before_d) | set(after_d))
                       if key != "path" and before_d.get(key) != after_d.get(key))
    before_header = str(entry.get("before_header", "before"))
    after_header = str(entry.get("after_header", "after"))
    if "/ansible-local-" in after_header:
        # the template module names its throwaway local render; the destination is what matters
        after_header = f"{before_header if before_header != 'before' else ''} (from Git)".strip()
    lines = difflib.unified_diff(
        str(before).splitlines(keepends=True), str(after).splitlines(keepends=True),
        fromfile=before_header, tofile=after_header)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _relative(text: str, project: Path) -> str:
    # messages name files by their path in the repository, not in the throwaway workspace
    return text.replace(f"{project}/", "").replace(str(project), ".")
