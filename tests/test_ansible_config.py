"""The job's settings: the repository's ansible.cfg wins for speed, never for host keys or output to disk."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import marshal
import os
import pickle
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from ansible.module_utils._internal._datatag import AnsibleTagHelper

from controller.ansible.job import PLUGINS, job_settings
from controller.ansible.playbook import CACHE as PARSED_CACHE
from controller.ansible.playbook import command as playbook_command
from controller.ansible.playbook import walk_stack_without_source
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


def test_the_source_cache_compiles_as_mitogen_would_and_takes_only_whole_entries_of_its_own(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("controller_linear", PLUGINS / "strategy" / "controller_linear.py")
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)  # with CONTROLLER_SOURCE_CACHE unset it changes nothing in mitogen
    cache = plugin.SourceCache(str(tmp_path))
    # valid Python that this module's own `from __future__ import annotations` would refuse
    source = b"def f(x: (y := 1)): pass\nimport json\n"
    fresh = compile(source, "m.py", "exec", 0, True)
    for _ in range(2):  # written, then read back
        code = cache.compile(source, "m.py", "exec")
        assert (code.co_flags, code.co_code, code.co_names) == (fresh.co_flags, fresh.co_code, fresh.co_names)
    [entry] = Path(cache.kept.directory).iterdir()
    # the same text as str is another entry (a coding cookie reads bytes and str differently)
    cache.compile(source.decode(), "m.py", "exec")
    assert len(list(Path(cache.kept.directory).iterdir())) == 2
    # an entry whose hash holds but which is not code (another tool's, or a hand's) is a miss, written again
    foreign = marshal.dumps({"not": "code"})
    entry.write_bytes(hashlib.sha256(foreign).digest() + foreign)
    assert cache.compile(source, "m.py", "exec").co_code == fresh.co_code
    assert marshal.loads(entry.read_bytes()[32:]).co_code == fresh.co_code
    # minified text: read back while whole; not UTF-8 any more, a miss that minifies afresh
    calls: list[str] = []
    minify = cache.minifier(lambda text: calls.append(text) or "x = 1\n")
    assert [minify("x = 1  # one\n") for _ in range(2)] == ["x = 1\n"] * 2 and len(calls) == 1
    [text] = [p for p in Path(cache.kept.directory).iterdir() if p.read_bytes()[32:] == b"x = 1\n"]
    text.write_bytes(hashlib.sha256(b"\xff").digest() + b"\xff")
    assert minify("x = 1  # one\n") == "x = 1\n" and len(calls) == 2


def test_ansible_playbook_keeps_what_it_parses_at_start_and_imports_nothing_from_the_repository(
        tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "site.yml").write_text("- hosts: all\n  gather_facts: false\n  tasks: [{ansible.builtin.ping: {}}]\n")
    (project / "hosts.yml").write_text("all: {hosts: {web1: {}}}\n")
    # a repository may hold files named as the modules ansible-playbook imports: never imported in their place
    (project / "yaml.py").write_text("raise SystemExit('the repository was imported')\n")
    (project / "ansible").mkdir()
    (project / "ansible" / "__init__.py").write_text("raise SystemExit('the repository was imported')\n")
    cache = tmp_path / "state" / "cache"
    env = job_settings(config(tmp_path), project, private(tmp_path)).env
    assert env[PARSED_CACHE] == str(cache)

    def syntax_check() -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*playbook_command(), "--syntax-check", "-i", "hosts.yml", "site.yml"], cwd=project,
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "playbook: site.yml" in done.stdout, done.stdout + done.stderr
        return done

    syntax_check()
    [kept] = cache.glob("ansible-parsed-*")
    every = sorted(kept.iterdir())
    assert all(hashlib.sha256(entry.read_bytes()[32:]).digest() == entry.read_bytes()[:32] for entry in every)
    # the documentation of each plugin the syntax check loaded (its inventory plugins...), pickled with the tags
    # Ansible's parse gave every value: where it was read from, and that it is trusted
    pickled = [entry for entry in every if entry.read_bytes()[32:33] == pickle.PROTO]
    documented = [pickle.loads(entry.read_bytes()[32:]) for entry in pickled]
    [yaml_inventory] = [doc for doc in documented if doc.get("name") == "yaml"]
    origin, trusted = sorted(AnsibleTagHelper.tags(yaml_inventory["short_description"]), key=repr)
    assert (type(origin).__name__, origin.path.endswith("/ansible/plugins/inventory/yaml.py")) == ("Origin", True)
    assert type(trusted).__name__ == "TrustedAsTemplate"
    # ansible-core's configuration definitions and its plugin routing, parsed once, each whole; and the code of
    # the methods dataclasses made, each under a hash of its source
    entries = [entry for entry in every if entry not in pickled]
    assert len(entries) == 3, entries
    assert all(isinstance(marshal.loads(entry.read_bytes()[32:]), dict) for entry in entries)
    [methods] = [marshal.loads(entry.read_bytes()[32:]) for entry in entries
                 if all(isinstance(key, bytes) for key in marshal.loads(entry.read_bytes()[32:]))]
    assert len(methods) > 100 and all(isinstance(marshal.loads(code), types.CodeType) for code in methods.values())

    def functions(code: types.CodeType) -> Iterator[str]:
        for inner in code.co_consts:
            if isinstance(inner, types.CodeType):
                yield inner.co_name
                yield from functions(inner)
    made = {name for code in methods.values() for name in functions(marshal.loads(code))}
    assert {"__init__", "__eq__", "__repr__"} <= made, made
    for entry in every:  # read back, not parsed again: the same entries, each marked as recently used
        os.utime(entry, ns=(0, 0))
    syntax_check()
    assert sorted(kept.iterdir()) == every and all(entry.stat().st_mtime_ns > 0 for entry in every)
    # an entry whose data no longer matches its hash (a disk's fault) is a miss, parsed and written again
    [routing] = [entry for entry in entries if "plugin_routing" in marshal.loads(entry.read_bytes()[32:])]
    written = routing.read_bytes()
    routing.write_bytes(written[:32] + marshal.dumps({"plugin_routing": "damaged"}))
    syntax_check()
    assert routing.read_bytes() == written


def test_ansible_s_stack_walk_names_the_same_caller_without_reading_any_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ansible.module_utils._internal._stack as stack

    monkeypatch.setattr(stack, "iter_stack", stack.iter_stack)  # put back after the test

    def deprecating() -> inspect.FrameInfo | None:  # as Ansible's deprecation names its issuer
        _skip_stackwalk = True  # a frame Ansible's walk skips
        return stack.caller_frame()

    read = deprecating()
    walk_stack_without_source()
    walked = deprecating()
    assert read is not None and walked is not None
    # the test's own frame either way: the same caller named, its lines of source read only by inspect.stack()
    name = "test_ansible_s_stack_walk_names_the_same_caller_without_reading_any_source"
    assert (walked.filename, walked.function) == (read.filename, read.function) == (__file__, name)
    assert read.code_context and walked.code_context is None


# a repository's own connection plugin that leaves a mark where it is imported
MARKING_CONNECTION = """\
from pathlib import Path

with open(Path(__file__).parent.parent / "imported", "a") as mark:
    mark.write("connection plugin imported\\n")
"""


def with_connection_plugin(tmp_path: Path, source: str) -> tuple[Path, Callable[..., CompletedProcess[str]]]:
    """A project of one play on one host, with ``source`` as a connection plugin of its own; and a way to run
    ``controller-ansible-playbook ARG...`` in it, as a job would."""
    project = tmp_path / "project"
    (project / "connection_plugins").mkdir(parents=True)
    (project / "connection_plugins" / "own.py").write_text(source)
    (project / "site.yml").write_text("- hosts: all\n  gather_facts: false\n  tasks: [{ansible.builtin.ping: {}}]\n")
    (project / "hosts.yml").write_text("all: {hosts: {web1: {}}}\n")
    env = job_settings(config(tmp_path), project, private(tmp_path)).env

    def playbook(*args: str) -> CompletedProcess[str]:
        return subprocess.run([*playbook_command(), *args, "-i", "hosts.yml"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    return project, playbook


def test_a_syntax_check_imports_no_connection_shell_or_become_plugin(tmp_path: Path) -> None:
    project, playbook = with_connection_plugin(tmp_path, MARKING_CONNECTION)
    checked = playbook("--syntax-check", "site.yml")
    assert checked.returncode == 0 and "playbook: site.yml" in checked.stdout, checked.stdout + checked.stderr
    assert not (project / "imported").exists()
    # before any run that may connect, every connection plugin is imported (its settings read): this one too
    listed = playbook("--list-hosts", "site.yml")
    assert listed.returncode == 0 and "web1" in listed.stdout, listed.stdout + listed.stderr
    assert (project / "imported").read_text() == "connection plugin imported\n"


# a repository's own connection plugin, imported before any run that may connect: at the end of the process, a
# thread of its own finishes its write, then an exit handler of its own writes after it; the idle worker of its
# thread pool is let go, as the interpreter's own exit does
LEAVING_CONNECTION = """\
import atexit
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MARK = Path(__file__).parent.parent / "left"


def late():
    time.sleep(0.3)
    with open(MARK, "a") as mark:
        mark.write("thread done\\n")


def handler():
    with open(MARK, "a") as mark:
        mark.write("exit handler\\n")


threading.Thread(target=late).start()
atexit.register(handler)
POOL = ThreadPoolExecutor(1)
POOL.submit(time.sleep, 0)
"""


def test_ansible_playbook_ends_with_its_own_code_after_its_threads_and_exit_handlers(tmp_path: Path) -> None:
    project, playbook = with_connection_plugin(tmp_path, LEAVING_CONNECTION)
    (project / "broken.yml").write_text("- hosts: all\n  tasks: [{ansible.builtin.ping: {}}\n")

    listed = playbook("--list-hosts", "site.yml")
    assert listed.returncode == 0 and "web1" in listed.stdout, listed.stdout + listed.stderr
    assert (project / "left").read_text() == "thread done\nexit handler\n"
    refused = playbook("--syntax-check", "broken.yml")  # Ansible's own code for a file it cannot parse
    assert refused.returncode == 4 and "broken.yml" in refused.stderr, refused.stdout + refused.stderr
