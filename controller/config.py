"""The bastion's configuration: where Git is, where keys and state live, how to run Ansible."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Self, get_args
from urllib.parse import parse_qs, urlsplit

from cronsim import CronSim, CronSimError

from controller.errors import ControllerError
from controller.schema import Parsed, Seconds, build, read_yaml
from controller.vocabulary import Event, Provider, Reason

SEARCH_PATH = (Path("controller.yml"), Path("/etc/controller/controller.yml"))
Forge = Literal["github", "gitlab", "gitea"]  # notify formats that post commit statuses
FORGES: tuple[Forge, ...] = get_args(Forge)
TOKEN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # a dashboard token's name: in the audit trail and its cookie


@dataclass(frozen=True)
class HostPort(Parsed):
    """Where a listener answers: ``127.0.0.1:8080``, ``[::1]:8080``; port 0 picks a free one."""

    host: str
    port: int
    EXAMPLE = "127.0.0.1:8080"

    @classmethod
    def parse(cls, text: str) -> Self:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT such as {cls.EXAMPLE}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class VerifyConfig:
    """Which commits must carry a good signature by a trusted key before anything is extracted."""

    mode: Literal["off", "head", "all"] = "off"  # (the commit reconciled) | all (every commit since the last)
    allowed_signers: str | None = None   # SSH signing keys, in git's allowed-signers format
    gpg_keyring: str | None = None       # OpenPGP public keys (binary or armored export)


@dataclass(frozen=True)
class SourceConfig:
    """The Git repository and branch that hold the desired state."""

    url: str
    branch: str = "main"
    fetch_timeout: Seconds = Seconds(120)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # a commit's page on the forge, {sha} replaced: the dashboard links every revision there
    commit_url: str | None = None


@dataclass(frozen=True)
class SopsConfig:
    """How SOPS files are decrypted."""

    age_key_file: str | None = None


@dataclass(frozen=True)
class SshConfig:
    """How the bastion reaches its servers, when the repository's ansible.cfg does not say."""

    private_key_file: str | None = None
    known_hosts_file: str | None = None     # default: known_hosts in the state directory
    host_key_checking: Literal["strict", "accept-new", "off"] = "accept-new"  # the repository cannot weaken it
    # verify's look carries checksums, modes and owners, no secret: X25519 costs a seventh of the CPU of
    # OpenSSH 9's post-quantum default per connection; "" keeps OpenSSH's choice there too
    verify_key_exchange: str = "curve25519-sha256"


@dataclass(frozen=True)
class VaultId:
    """One Ansible Vault identity: its label and the file holding its password."""

    id: str
    password_file: str


@dataclass(frozen=True)
class AnsibleConfig:
    """Speed settings; each applies only where the repository's ansible.cfg does not set it."""

    forks: int = 50                 # Ansible starts at most one worker per host: every host of a usual fleet at once
    # apps that do not depend on each other run this many at once, each with forks / parallel_apps of the forks
    parallel_apps: int = 1
    # auto: mitogen (unpinned) when it can run, else linear
    strategy: Literal["auto", "mitogen", "linear", "free"] = "auto"
    cpu_pinning: bool = False       # mitogen's own CPU placement (measured slower on small machines)
    vault_password_file: str | None = None   # Ansible Vault's default identity
    vault_ids: tuple[VaultId, ...] = ()      # more identities: [{id: prod, password_file: ...}]
    pipelining: bool = True
    control_persist: Seconds = Seconds(60)   # how long an idle SSH master connection is kept
    timeout: Seconds = Seconds(10)           # SSH connect timeout
    task_timeout: Seconds = Seconds(300)     # a host that answers no task for this long is cut off (timed out)
    run_timeout: Seconds = Seconds(3600)     # a deadline for one playbook run (check or apply) as a whole


@dataclass(frozen=True)
class GalaxyConfig:
    """Where ``ansible-galaxy`` installs the roles and collections a revision requires from."""

    server: str | None = None       # a Galaxy (or Automation Hub, Pulp) API URL; default: ansible.cfg's, then Galaxy
    timeout: Seconds = Seconds(300)  # for one ansible-galaxy install (a requirements file's roles or collections)


@dataclass(frozen=True)
class WebhookConfig:
    """One Git host's push webhook (``POST /hooks/PROVIDER``) and its own secret."""

    provider: Provider
    secret_file: str


@dataclass(frozen=True)
class WatchConfig:
    """``controller watch``: its triggers, schedule and listener; drift schedule also for --only-if-changed."""

    poll_interval: Seconds = Seconds(60)           # between fetches; 0 turns polling off
    listen: HostPort | None = None       # webhooks, /healthz, /metrics and the dashboard
    webhooks: tuple[WebhookConfig, ...] = ()  # a secret per provider
    webhook_secret_file: str | None = None    # older configs: the secret of /hooks/github and /hooks/generic only
    max_body_bytes: int = 1_048_576      # bigger webhook bodies get 413
    drift_check_interval: Seconds = Seconds(900)   # between scheduled drift checks per app; 0: off
    drift_check_cron: str | None = None  # a cron expression instead of the interval
    verify_interval: Seconds = Seconds(0)          # between verifies of every host against its manifest; 0: off
    debounce: Seconds = Seconds(0.5)               # wait this long after a trigger so a burst makes one run
    backoff: Seconds = Seconds(10)                 # first retry after a failing cycle; doubles up to backoff_max
    backoff_max: Seconds = Seconds(600)
    watch_local: bool = True             # react to pushes into a bare source repository on this host


@dataclass(frozen=True)
class UiToken:
    """A named dashboard token: its holder's actions are recorded under ``name``; ``read_only``: pages only."""

    name: str
    file: str
    read_only: bool = False


@dataclass(frozen=True)
class UiConfig:
    """The dashboard on the listener (``watch`` and ``serve``): who may read it and act from it."""

    enabled: bool = True                 # false: the listener serves only webhooks, /healthz and /metrics
    token_file: str | None = None        # when set, every page asks for it; required off loopback
    tokens: tuple[UiToken, ...] = ()     # named tokens (several people, read-only ones), beside or instead of it
    external_url: str | None = None      # where people reach the dashboard (behind a proxy): links to runs


@dataclass(frozen=True)
class NotifyTarget:
    """Where notifications go: a generic JSON webhook, a Slack-compatible incoming webhook, or the commit
    statuses of a forge (GitHub, GitLab, Gitea/Forgejo), posted after each check and sync."""

    format: Literal["json", "slack"] | Forge = "json"
    url: str | None = None               # a forge's API: https://api.github.com, https://gitlab.example.com, ...
    url_file: str | None = None          # the URL kept in a file (it is a secret for Slack)
    events: tuple[Event, ...] = ()       # empty: every event
    repository: str | None = None        # a forge's repository: OWNER/NAME (GitLab: the project's path or ID)
    token_file: str | None = None        # a forge's API token, in a file


@dataclass(frozen=True)
class RetentionConfig:
    """How much of the history the state store keeps (state/retention.py). The same run again folds into one row
    as it comes; of the unremarkable runs, those older than ``max_age`` or beyond the newest ``max_runs`` go.
    Applies, failures and runs that found something new (a state change, a new diff) stay whatever these say."""

    max_age: Seconds = Seconds(90 * 86400)
    max_runs: int = 10_000


@dataclass(frozen=True)
class StateConfig:
    """Where the state store is: the state directory's SQLite file, or a PostgreSQL database (``url``) that two
    bastions share."""

    url: str | None = None  # postgresql://USER@HOST/DB; a password in it or, better, in ~/.pgpass (PGPASSFILE)


@dataclass(frozen=True)
class ExecutionNode:
    """A machine that checks and applies the hosts of some inventory groups for this bastion (ansible-runner's
    worker, reached over ssh); the bastion still decrypts, decides and records."""

    name: str
    ssh: str                              # user@address, or ssh://user@address:port
    groups: tuple[str, ...]               # the inventory groups whose hosts it serves
    python: str = "python3"               # a Python on the node with ansible-core and ansible-runner
    workspace_dir: str = "/dev/shm"       # a tmpfs on the node: each job's directory, wiped when it ends
    private_key_file: str | None = None   # on the node: the key it reaches its hosts with (default: its own ssh's)


@dataclass(frozen=True)
class Config:
    """The whole bastion configuration, paths made absolute relative to the file."""

    source: SourceConfig
    state_dir: str = "/var/lib/controller"
    workspace_dir: str = "/dev/shm"
    sops: SopsConfig = field(default_factory=SopsConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    ansible: AnsibleConfig = field(default_factory=AnsibleConfig)
    galaxy: GalaxyConfig = field(default_factory=GalaxyConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    notify: tuple[NotifyTarget, ...] = ()
    ui: UiConfig = field(default_factory=UiConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    state: StateConfig = field(default_factory=StateConfig)
    execution_nodes: tuple[ExecutionNode, ...] = ()

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def store_path(self) -> Path:
        """The state store's SQLite file, unless ``state.url`` names a PostgreSQL database (``Store.of``)."""
        return self.state_path / "state.db"

    @property
    def known_hosts(self) -> Path:
        """Where host keys are checked (and, under accept-new, recorded)."""
        return Path(self.ssh.known_hosts_file or self.state_path / "known_hosts")


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
    for key in ("forks", "parallel_apps"):
        if getattr(config.ansible, key) < 1:
            raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ansible.{key}: must be at least 1")
    for key in ("task_timeout", "run_timeout", "timeout", "control_persist"):
        if getattr(config.ansible, key) < 1:  # 0 would mean "at once" or, to ssh, "for ever"
            raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ansible.{key}: must be at least 1s")
    if config.retention.max_age < 3600 or config.retention.max_runs < 100:
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: retention: keep at least 1h and 100 runs (max_age: "
                                                     f"{config.retention.max_age:g}s, max_runs: "
                                                     f"{config.retention.max_runs})")
    _check_state_url(config.state.url, path)
    if config.source.fetch_timeout < 1:
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: source.fetch_timeout: must be at least 1s")
    _check_watch(config.watch, path)
    for number, target in enumerate(config.notify):
        _check_target(target, path, f"notify[{number}]")
    _check_external_url(config.ui, path)
    _check_tokens(config.ui, path)
    _check_commit_url(config.source.commit_url, path)
    _check_nodes(config.execution_nodes, path)
    base = path.resolve().parent

    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / os.path.expanduser(value)).resolve())

    url = config.source.url
    if "://" not in url and ":" not in url.split("/")[0] and not url.startswith("/"):
        url = str(absolute(url))  # a relative local path
    verify = replace(config.source.verify, allowed_signers=absolute(config.source.verify.allowed_signers),
                     gpg_keyring=absolute(config.source.verify.gpg_keyring))
    _check_verify(verify, path)
    _check_state_dir(Path(str(absolute(config.state_dir))), path)
    return replace(
        config,
        source=replace(config.source, url=url, verify=verify),
        state_dir=str(absolute(config.state_dir)),
        workspace_dir=str(absolute(config.workspace_dir)),
        sops=SopsConfig(absolute(config.sops.age_key_file)),
        ansible=replace(config.ansible, vault_password_file=absolute(config.ansible.vault_password_file),
                        vault_ids=tuple(VaultId(v.id, str(absolute(v.password_file)))
                                        for v in config.ansible.vault_ids)),
        ssh=replace(config.ssh, private_key_file=absolute(config.ssh.private_key_file),
                    known_hosts_file=absolute(config.ssh.known_hosts_file)),
        watch=replace(config.watch, webhook_secret_file=absolute(config.watch.webhook_secret_file),
                      webhooks=tuple(replace(w, secret_file=str(absolute(w.secret_file)))
                                     for w in config.watch.webhooks)),
        notify=tuple(replace(t, url_file=absolute(t.url_file), token_file=absolute(t.token_file))
                     for t in config.notify),
        ui=replace(config.ui, token_file=absolute(config.ui.token_file),
                   tokens=tuple(replace(t, file=str(absolute(t.file))) for t in config.ui.tokens),
                   external_url=config.ui.external_url and config.ui.external_url.rstrip("/")),
    )


def _check_nodes(nodes: tuple[ExecutionNode, ...], path: Path) -> None:
    seen: dict[str, str] = {}
    for number, node in enumerate(nodes):
        where = f"{path}: execution_nodes[{number}]"
        if not TOKEN_NAME.fullmatch(node.name) or node.name in {n.name for n in nodes[:number]}:
            raise ControllerError(Reason.CONFIG_INVALID, f"{where}: name: {node.name!r} must be unique, letters, "
                                                         "digits and ._@- only")
        if not node.ssh.strip() or node.ssh.startswith("-"):
            raise ControllerError(Reason.CONFIG_INVALID, f"{where}: ssh: expected user@address or "
                                                         "ssh://user@address:port")
        if not node.groups:
            raise ControllerError(Reason.CONFIG_INVALID, f"{where}: groups: name the inventory groups it serves")
        for group in node.groups:
            if group in seen:  # which node a host goes to must never depend on the order of a list
                raise ControllerError(Reason.CONFIG_INVALID, f"{where}: groups: {group} is served by "
                                                             f"{seen[group]} already")
            seen[group] = node.name
        if not node.workspace_dir.startswith("/"):
            raise ControllerError(Reason.CONFIG_INVALID, f"{where}: workspace_dir: an absolute path on the node")


def _check_state_url(url: str | None, path: Path) -> None:
    if url is None:
        return
    if not url.startswith(("postgresql://", "postgres://")):
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: state.url: not a PostgreSQL URL (postgresql://USER@HOST"
                                                     "/DB); leave state.url out for the SQLite file in state_dir")
    if "password" in parse_qs(urlsplit(url).query):  # it would be shown wherever the store is named
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: state.url: a password in the query string; keep it in "
                                                     "a passfile (?passfile=/var/lib/controller/.pgpass) or ~/.pgpass")


def _check_watch(watch: WatchConfig, path: Path) -> None:
    def fail(key: str, message: str) -> ControllerError:
        return ControllerError(Reason.CONFIG_INVALID, f"{path}: watch.{key}: {message}")

    seen: set[Provider] = set()
    for number, hook in enumerate(watch.webhooks):
        if hook.provider in seen:
            raise fail(f"webhooks[{number}].provider", f"{hook.provider} is listed twice: one secret per provider")
        seen.add(hook.provider)
    if watch.drift_check_cron is not None:
        try:
            CronSim(watch.drift_check_cron, datetime.now(UTC))
        except CronSimError as exc:
            raise fail("drift_check_cron", f"not a cron expression ({exc})") from None


def _check_state_dir(state: Path, path: Path) -> None:
    """The state directory is a directory, or can become one: nothing in its way, its parent writable."""
    existing = next(p for p in (state, *state.parents) if p.exists())
    if not existing.is_dir():
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: state_dir: {existing} is a file, not a directory"
                              + ("" if existing == state else f" (state_dir is {state})"))
    if existing != state and not os.access(existing, os.W_OK | os.X_OK):
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: state_dir: {state} does not exist and cannot be "
                              f"created: {existing} is not writable for this user")


def _check_verify(verify: VerifyConfig, path: Path) -> None:
    def fail(key: str, message: str) -> ControllerError:
        return ControllerError(Reason.CONFIG_INVALID, f"{path}: source.verify.{key}: {message}")

    if verify.mode == "off":
        return
    if verify.allowed_signers is None and verify.gpg_keyring is None:
        raise fail("mode", f"{verify.mode} needs trusted keys: set allowed_signers (SSH) or gpg_keyring "
                           "(OpenPGP), or both")
    for key in ("allowed_signers", "gpg_keyring"):
        file = getattr(verify, key)
        try:
            with open(file or os.devnull, "rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise fail(key, f"cannot read {file}: {exc.strerror}") from None


def _check_target(target: NotifyTarget, path: Path, key: str) -> None:
    def fail(message: str) -> ControllerError:
        return ControllerError(Reason.CONFIG_INVALID, f"{path}: {key}: {message}")

    if target.format in FORGES:
        missing = [key for key in ("url", "repository", "token_file") if getattr(target, key) is None]
        if missing:
            raise fail(f"{missing[0]}: required for {target.format} commit statuses")
        if urlsplit(target.url).scheme not in ("http", "https"):
            raise fail(f"url: the {target.format} API's http(s) address, such as https://api.github.com")
        if target.url_file is not None or target.events:
            raise fail(f"{'url_file' if target.url_file else 'events'}: not for commit statuses, which follow "
                       "every check and sync")
        return
    if target.repository is not None or target.token_file is not None:
        raise fail(f"{'repository' if target.repository else 'token_file'}: only for commit statuses "
                   f"(format: {', '.join(FORGES)})")
    if (target.url is None) == (target.url_file is None):
        raise fail("set exactly one of url and url_file")


def _check_commit_url(url: str | None, path: Path) -> None:
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or "{sha}" not in url):
        raise ControllerError(Reason.CONFIG_INVALID, f"{path}: source.commit_url: expected a web address with {{sha}} "
                              f"where the commit goes, such as https://github.com/ORG/REPO/commit/{{sha}}, got {url!r}")


def _check_tokens(ui: UiConfig, path: Path) -> None:
    names = [t.name for t in ui.tokens]
    for number, name in enumerate(names):
        if not TOKEN_NAME.fullmatch(name):
            raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ui.tokens[{number}].name: {name!r}: letters, "
                                  "digits, '.', '_', '-' and '@' only (it names the holder in the audit trail)")
        if name in names[:number]:
            raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ui.tokens[{number}].name: {name!r} is named twice")


def _check_external_url(ui: UiConfig, path: Path) -> None:
    if ui.external_url is not None:
        parts = urlsplit(ui.external_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ControllerError(Reason.CONFIG_INVALID, f"{path}: ui.external_url: expected the dashboard's address "
                                  f"as people reach it, such as https://controller.example.com, got "
                                  f"{ui.external_url!r}")
