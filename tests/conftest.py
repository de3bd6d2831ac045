"""Shared fixtures: real age keys, real lab hosts, a real bare Git remote holding the example fleet."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import load_config
from controller.report.documents import run_document
from controller.run.recovery import recover
from controller.state.store import Store
from lab import Lab
from lab.repository import AgeKey, git, make_age_key, sops_encrypt
from tests.support.leaks import files_containing
from tests.support.postgres import Postgres

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLE = ("ansible.cfg", "gitops.yml", ".sops.yaml", "playbooks", "roles", "inventories")


def worker_prefix(base: str, worker: str) -> str:
    """The /24 of one xdist worker (``gw0``, ``gw1``...): ``base`` moved up 100 in its last octet per worker."""
    first, second, third = base.split(".")
    moved = int(third) + 100 * int(worker.removeprefix("gw"))
    if moved > 255:
        raise pytest.UsageError(f"CONTROLLER_TEST_PREFIX {base}: worker {worker} would need {first}.{second}.{moved}; "
                                "pick a last octet under 56, or fewer workers")
    return f"{first}.{second}.{moved}"


# The tests' own directories (tmp_path: fleets, Git remotes, state stores, the lab hosts' layers) on tmpfs where it
# has room (a whole session peaks near 0.5 GB): a test makes and removes thousands of small files, and on this
# machine's ext4 each costs 0.2-0.4 ms of system CPU, a dozen times tmpfs's (bench/notes.md). The controller's own
# choices are untouched: a test that needs a persistent disk names one. pytest reads PYTEST_DEBUG_TEMPROOT for the
# directory that holds its pytest-of-USER.
SHM = os.statvfs("/dev/shm")
if SHM.f_bavail * SHM.f_frsize >= 2 << 30:
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/dev/shm")

# tests of one run share this /24, each xdist worker its own; a second run beside it (another checkout) picks
# another with CONTROLLER_TEST_PREFIX
TEST_PREFIX = worker_prefix(os.environ.get("CONTROLLER_TEST_PREFIX", "127.0.2"),
                            os.environ.get("PYTEST_XDIST_WORKER", "gw0"))


def own_prefix(offset: int) -> str:
    """A /24 of its own beside TEST_PREFIX (for a lab that lives beside the per-test ones)."""
    first, second, third = TEST_PREFIX.split(".")
    return f"{first}.{int(second) + offset}.{third}"


USER = pwd.getpwuid(os.getuid()).pw_name  # who the audit trail says ran a command of these tests
APP_YML = "/srv/opt/shop/conf/app.yml"
VERSION = "/srv/opt/shop/VERSION"

# Every plaintext secret a test encrypts; the leak sweep searches the disk for them when the session ends.
PLAINTEXTS: list[str] = []


# mitogen's compiled and minified sources (plugins/strategy/controller_linear.py) as the first run of this test
# process left them in its state dir: a new fleet starts with a copy, as a bastion's second run would (the
# entries are named by a hash of their source, so a copy is as good as the run's own). Set for the session.
WARM_SOURCES: list[Path] = []


def secret(label: str) -> str:
    """A unique plaintext secret value, remembered for the leak search."""
    value = f"{label}-{uuid.uuid4().hex[:12]}-plaintext"
    PLAINTEXTS.append(value)
    return value


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The leak sweep, once every test of every worker is done: no plaintext secret left on disk."""
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: its plaintexts go to the controlling process
        config.workeroutput["plaintexts"] = PLAINTEXTS  # type: ignore[attr-defined]
        return
    if config.option.collectonly or not PLAINTEXTS:
        return
    leaks = files_containing([p.encode() for p in PLAINTEXTS])
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", f"leak sweep: {len(PLAINTEXTS)} plaintext secrets, {len(leaks)} found on disk",
                           red=bool(leaks), green=not leaks)
        for leak in leaks:
            reporter.write_line(leak)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The modules that take longest, longest first (their --durations summed from a CI log). Workers take whole
# modules in collection order (--dist loadfile --no-loadscope-reorder): with these first, each worker ends on
# short modules and none waits long for another. The others follow in file order.
LONGEST = ("test_sync", "test_watch", "test_state_model", "test_rollout", "test_real_repositories",
           "test_execution_nodes", "test_verify",
           "test_ops_repository", "test_dashboard", "test_windows", "test_crash", "test_approvals", "test_molecule",
           "test_signatures", "test_requirements", "test_rollback", "test_postgres", "test_host_keys",
           "test_example_repository", "test_review", "test_lab", "test_secrets", "test_source", "test_listener",
           "test_health", "test_progress", "test_vault", "test_deploy", "test_leak_sweep", "test_cli")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (LONGEST); a module's tests keep their order (the sort is stable)."""
    rank = {f"tests.{name}": place for place, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(getattr(item.module, "__name__", ""), len(LONGEST)))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any) -> None:
    """An xdist worker finished: its plaintexts join this process's sweep."""
    PLAINTEXTS.extend(node.workeroutput.get("plaintexts", []))


@pytest.fixture(scope="session")
def age_key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server, one per test process, started when a test first asks for it."""
    server = Postgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """Each engine of the state store in turn: None for the SQLite file, else a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    server: Postgres = request.getfixturevalue("postgres")
    return server.url(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Three fresh hosts per test (starting one takes milliseconds), always stopped."""
    with Lab(tmp_path / "lab", 3, prefix=TEST_PREFIX) as running:
        yield running


@dataclass
class Fleet:
    """The example repository in a bare remote, a working clone to push from, and a bastion config."""

    root: Path
    lab: Lab
    key: AgeKey
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "controller.yml"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def host_file(self, host: str, path: str) -> Path:
        """A managed file (``/srv/...``) on lab host ``h1``/``h2``/``h3``, seen from outside."""
        return self.lab.host(host).path(path)

    def write(self, relative: str, content: str) -> None:
        target = self.work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)

    def push(self, message: str, *, ref: str = "main", force: bool = False) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", f"HEAD:{ref}")
        return git(self.work, "rev-parse", "HEAD")

    def encrypt(self, relative: str, values: dict[str, str]) -> None:
        self.write(relative, sops_encrypt(self.work / ".sops.yaml", relative, yaml.safe_dump(values)))

    def controller(self, *args: str, timeout: float = 300,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real ``controller`` command against this fleet (``env``: variables to add)."""
        env = {**os.environ, "CONTROLLER_CONFIG": str(self.config), **(env or {})}
        done = subprocess.run([str(BIN / "controller"), *args], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        keep_warm_sources(self.state)
        return done

    def controller_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.controller(*args, "--json")
        return done.returncode, json.loads(done.stdout)

    def sync(self, *options: str) -> dict[str, Any]:
        """``controller sync --json`` with ``options``, as its JSON reads."""
        found: dict[str, Any] = json.loads(self.controller("sync", "--json", *options).stdout)
        return found

    def deployed(self, host: str) -> tuple[str, int]:
        """What VERSION says on a lab host, and when it was last written."""
        path = self.host_file(host, VERSION)
        return path.read_text(), path.stat().st_mtime_ns

    def status_of(self, app: str) -> dict[str, Any]:
        """One app as ``controller status --json`` lists it."""
        done = self.controller("status", "--json")
        assert done.returncode == 0, done.stderr
        return next(a for a in json.loads(done.stdout) if a["app"] == app)

    def runs(self) -> list[dict[str, Any]]:
        """Every run in the state store, newest first, as ``controller history --json`` shows them, after the same
        clean-up the command does first. Read in this process: tests poll it ten times a second while a daemon
        works, and a command each time took a core from the daemon under test (test_sync.py checks the command)."""
        config = load_config(self.config)
        with Store.of(config) as store:
            recover(config, store)
            found = [run_document(record) for record in store.runs(None, 1000)]
        return list(json.loads(json.dumps(found)))  # as the JSON reads: lists, plain strings


PLACEMENT = {"staging": {"web1.staging": "h1", "web2.staging": "h2"}, "production": {"web1.prod": "h3"}}


@pytest.fixture(scope="session", autouse=True)
def warm_sources(tmp_path_factory: pytest.TempPathFactory) -> None:
    WARM_SOURCES[:] = [tmp_path_factory.getbasetemp() / "warm-sources"]


def keep_warm_sources(state: Path) -> None:
    """The first run of this test process that left mitogen's sources in a state dir: kept for the fleets after."""
    if not WARM_SOURCES or WARM_SOURCES[0].exists():
        return
    kept = list((state / "cache").glob("mitogen-sources-*"))
    if kept:
        ready = WARM_SOURCES[0].with_name(".warm-sources")
        shutil.rmtree(ready, ignore_errors=True)
        shutil.copytree(kept[0], ready / kept[0].name)
        ready.rename(WARM_SOURCES[0])


def seed_warm_sources(state: Path) -> None:
    """A new state dir (0700, as the controller makes it) with the warm sources, once there are some."""
    if not WARM_SOURCES or not WARM_SOURCES[0].exists():
        return
    (state / "cache").mkdir(mode=0o700, parents=True)
    state.chmod(0o700)
    for kept in WARM_SOURCES[0].iterdir():
        shutil.copytree(kept, state / "cache" / kept.name)


def build_fleet(root: Path, lab: Lab, key: AgeKey, apps: tuple[str, ...] = ("staging",),
                placement: dict[str, dict[str, str]] = PLACEMENT, app_only: bool = False) -> Fleet:
    """The example repository on the test lab: by default staging on h1, h2; production on h3. ``app_only``:
    site.yml plays the app role alone (VERSION, app.yml, the secrets), for the tests of how the controller rolls
    a revision out, which need no more of a host: half the tasks, and each task costs every run a worker and a
    module call per host."""
    fleet = Fleet(root, lab, key)
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--bare", "-b", "main", str(fleet.remote))
    fleet.work.mkdir()
    for name in EXAMPLE:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, fleet.work / name)
    sops_config = fleet.work / ".sops.yaml"
    sops_config.write_text(sops_config.read_text().replace("REPLACE_WITH_YOUR_AGE_RECIPIENT", key.recipient))
    gitops = yaml.safe_load((ROOT / "gitops.yml").read_text())
    gitops["apps"] = [{**a, "depends_on": [d for d in a.get("depends_on", []) if d in apps]}
                      for a in gitops["apps"] if a["name"] in apps]
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    if app_only:
        plays = yaml.safe_load((fleet.work / "playbooks/site.yml").read_text())
        fleet.write("playbooks/site.yml", yaml.safe_dump([p for p in plays if p["roles"] == ["app"]], sort_keys=False))
    for env, hosts in placement.items():
        inventory = {"all": {"children": {"web": {"hosts": {
            name: {"ansible_host": lab.host(h).address} for name, h in hosts.items()}}}}}
        fleet.write(f"inventories/{env}/hosts.yml", yaml.safe_dump(inventory))
        fleet.secrets[env] = secret(f"{env}-db")
        fleet.encrypt(f"inventories/{env}/group_vars/all/secrets.sops.yml",
                      {"app_db_password": fleet.secrets[env], "app_api_token": secret(f"{env}-token")})
    git(fleet.work, "init", "-q", "-b", "main")
    git(fleet.work, "remote", "add", "origin", str(fleet.remote))
    fleet.push("Example fleet")
    write_config(fleet)
    seed_warm_sources(fleet.state)
    return fleet


def write_config(fleet: Fleet, **overrides: Any) -> None:
    config: dict[str, Any] = {
        "source": {"url": str(fleet.remote), "branch": "main"},
        "state_dir": str(fleet.state),
        "sops": {"age_key_file": str(fleet.key.path)},
        "ssh": {"private_key_file": str(fleet.lab.private_key),
                "known_hosts_file": str(fleet.lab.known_hosts)},
    }
    config.update(overrides)
    fleet.config.write_text(yaml.safe_dump(config))


def fleet_on(repo: Path, root: Path, lab: Lab, key: AgeKey, message: str, **config: Any) -> Fleet:
    """``repo``'s files committed on ``main`` as ``message``, and a fleet at ``root`` whose bastion config fetches
    that repository itself (no remote, no SOPS; ``config``: more settings)."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    fleet = Fleet(root, lab, key)
    write_config(fleet, source={"url": str(repo), "branch": "main"}, sops={}, **config)
    return fleet


@pytest.fixture
def fleet(tmp_path: Path, lab: Lab, age_key: AgeKey) -> Fleet:
    return build_fleet(tmp_path / "fleet", lab, age_key)


@pytest.fixture
def fleet_app(tmp_path: Path, lab: Lab, age_key: AgeKey) -> Fleet:
    """The example fleet, never synced, with site.yml playing the app role alone (build_fleet's ``app_only``): for
    the tests of a run's own life (interruption, locks, keys, signatures) that read nothing the base role writes."""
    return build_fleet(tmp_path / "fleet", lab, age_key, app_only=True)


@dataclass(frozen=True)
class Converged:
    """The example fleet synced once per session, kept (hosts stopped) to be copied back before each test."""

    place: Path  # where every converged test's fleet lives: the state and the caches name absolute paths
    original: Path
    secrets: dict[str, str]
    first: subprocess.CompletedProcess[str]  # what that first sync printed, for the tests of a first sync


def converge_once(factory: pytest.TempPathFactory, key: AgeKey, name: str, **build: Any) -> Converged:
    """The example fleet (``build``: build_fleet's options) synced once in ``basetemp/name``, kept (hosts stopped)."""
    place = factory.getbasetemp() / name
    with Lab(place / "lab", 3, prefix=TEST_PREFIX) as running:
        built = build_fleet(place / "fleet", running, key, **build)
        first = built.controller("sync")
        assert first.returncode == 0, first.stdout + first.stderr
    original = factory.mktemp(f"{name}-original") / name
    subprocess.run(["cp", "-a", str(place), str(original)], check=True)
    return Converged(place, original, dict(built.secrets), first)


def copied_back(converged: Converged, key: AgeKey) -> Iterator[Fleet]:
    """A converged fleet copied back to where it was converged, its hosts started for one test."""
    shutil.rmtree(converged.place, ignore_errors=True)
    subprocess.run(["cp", "-a", str(converged.original), str(converged.place)], check=True)
    with Lab(converged.place / "lab", 3, prefix=TEST_PREFIX) as running:
        yield Fleet(converged.place / "fleet", running, key, dict(converged.secrets))


@pytest.fixture(scope="session")
def converged_original(tmp_path_factory: pytest.TempPathFactory, age_key: AgeKey) -> Converged:
    return converge_once(tmp_path_factory, age_key, "converged")


@pytest.fixture
def converged(converged_original: Converged, age_key: AgeKey) -> Iterator[Fleet]:
    """The example fleet after one successful ``sync`` (staging on h1, h2), copied, not converged again."""
    yield from copied_back(converged_original, age_key)


@pytest.fixture(scope="session")
def converged_app_original(tmp_path_factory: pytest.TempPathFactory, age_key: AgeKey) -> Converged:
    return converge_once(tmp_path_factory, age_key, "converged-app", app_only=True)


@pytest.fixture
def converged_app(converged_app_original: Converged, age_key: AgeKey) -> Iterator[Fleet]:
    """The same with site.yml playing the app role alone (build_fleet's ``app_only``), for the tests that touch
    only what the app role writes."""
    yield from copied_back(converged_app_original, age_key)


def bump_version(fleet: Fleet, version: str, *, ref: str = "main", force: bool = False) -> str:
    """Commit and push a new ``app_version`` (deployed to ``VERSION`` on every host)."""
    defaults = fleet.work / "roles/app/defaults/main.yml"
    text = defaults.read_text()
    defaults.write_text("\n".join(
        f'app_version: "{version}"' if line.startswith("app_version:") else line
        for line in text.splitlines()) + "\n")
    return fleet.push(f"Release {version}", ref=ref, force=force)
