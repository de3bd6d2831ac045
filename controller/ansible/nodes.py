"""Execution nodes (``execution_nodes:``): the hosts of some inventory groups are checked and applied from another
machine, through ansible-runner's own streaming: ``transmit`` here, its ``worker`` there over ssh, ``process`` back
here. The events come back as a local run's do, so diffs, masking, manifests and records are made the same way.

The job's directory (the revision, its decrypted vars, the installed requirements, our plugins) travels in the
stream to a tmpfs on the node and is wiped there when the job ends (node_worker.py). Paths of this bastion in
the job's settings are written as tokens the worker puts its own paths in. The node reaches its hosts with its
own ssh key; host keys are checked as this bastion says, against this bastion's known_hosts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import importlib.util
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.ansible.node_worker import HEARTBEAT, HERE, KNOWN_HOSTS_EVENT, MITOGEN
from controller.ansible.playbook import CACHE as PARSED_CACHE
from controller.ansible.results import Connection
from controller.config import Config, ExecutionNode
from controller.process import STOP_GRACE, reaped, run
from controller.vocabulary import Reason

# what the node is sent besides the worker: standard library only, like it
SENT = ("controller.mounts", "controller.reaper", "controller.ansible.wrappers", "controller.ansible.node_worker")
# runs on the node: installs the modules that arrive first on stdin, then hands stdin to the worker
LOADER = """\
import json, sys, types
for name in ("controller", "controller.ansible"):
    sys.modules[name] = types.ModuleType(name)
for name, source in json.loads(sys.stdin.buffer.read(int(sys.stdin.buffer.readline()))).items():
    module = sys.modules[name] = types.ModuleType(name)
    exec(compile(source, f"<controller: {name}>", "exec"), module.__dict__)
sys.exit(sys.modules["controller.ansible.node_worker"].main(sys.argv[1], json.loads(sys.argv[2])))
"""
TRANSMIT = """\
import json, sys
from ansible_runner.streaming import Transmitter
with open(sys.argv[2]) as told:
    Transmitter(_output=sys.stdout.buffer, private_data_dir=sys.argv[1], **json.load(told)).run()
"""
# variables of this bastion's session that would be wrong on the node: it has its own (and no state dir to cache in)
NODE_OWN = ("HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK", "PATH", "ANSIBLE_PRIVATE_KEY_FILE", "CONTROLLER_SOURCE_CACHE",
            PARSED_CACHE)
SERVER_ALIVE = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")  # a node gone is noticed in ~15 s
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class NodeAccess:
    """How a job reaches its execution nodes, and what of this bastion it ships there."""

    nodes: tuple[ExecutionNode, ...]
    ssh: tuple[str, ...]                      # ssh's argv up to the node's address
    shipped: tuple[tuple[str, Path], ...]     # (its place in the node's job directory, its path here)
    ssh_options: tuple[str, ...]              # the host-key options the node's ssh wrappers put first (its paths)
    learn_keys: Path | None                   # under accept-new: where the host keys a node met are added

    def served(self) -> dict[str, tuple[str, ...]]:
        """Each node's groups, by node name."""
        return {node.name: node.groups for node in self.nodes}

    def node(self, name: str) -> ExecutionNode:
        return next(node for node in self.nodes if node.name == name)


def node_access(config: Config, project: Path, private: Path, plugins: Path,
                ssh_options: tuple[str, ...]) -> NodeAccess | None:
    """How the job at ``project`` (its private files in ``private``, our Ansible plugins in ``plugins``) reaches the
    bastion's execution nodes."""
    if not config.execution_nodes:
        return None
    settings = config.ansible
    vaults = [path for path in (settings.vault_password_file, *(v.password_file for v in settings.vault_ids)) if path]
    shipped = [("project", project), ("job", private), ("plugins", plugins),
               *((f"vault/{number}", Path(path)) for number, path in enumerate(vaults))]
    if config.ssh.host_key_checking != "off":
        shipped.append(("known_hosts", config.known_hosts))
    key = ("-i", config.ssh.private_key_file) if config.ssh.private_key_file else ()
    ssh = ("ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={round(settings.timeout)}", *SERVER_ALIVE,
           *(arg for option in ssh_options for arg in ("-o", option)), *key)
    # the node checks host keys against the copy of this bastion's known_hosts it gets
    on_node = tuple(option.replace(str(config.known_hosts), f"{HERE}/known_hosts") for option in ssh_options)
    return NodeAccess(config.execution_nodes, ssh, tuple(shipped), on_node,
                      config.known_hosts if config.ssh.host_key_checking == "accept-new" else None)


def for_node(access: NodeAccess, node: ExecutionNode, settings: Mapping[str, Any]) -> dict[str, Any]:
    """ansible-runner's settings for a run on ``node``: this bastion's paths turned into the node's."""
    # as written, and resolved (the requirements' search paths are): a workspace_dir may be reached through a link
    places = {str(where): f"{HERE}/{name}" for name, path in access.shipped for where in (path, path.resolve())}
    mitogen = importlib.util.find_spec("ansible_mitogen")
    if mitogen is not None and mitogen.origin is not None:
        places[str(Path(mitogen.origin).parent / "plugins" / "strategy")] = MITOGEN

    def placed(value: str) -> str:
        for path in sorted(places, key=len, reverse=True):  # a path inside another is placed by its own name
            value = value.replace(path, places[path])
        return value

    env = {key: placed(value) for key, value in settings["envvars"].items() if key not in NODE_OWN}
    if node.private_key_file:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = node.private_key_file
    return {**settings, "envvars": env, "cmdline": placed(settings["cmdline"])}


def run_on_node(access: NodeAccess, name: str, staging: Path, settings: Mapping[str, Any],
                handle: Callable[[dict[str, Any]], bool], stop: Callable[[], bool],
                reached: Callable[[], Mapping[str, Connection]]) -> str | None:
    """Run the job of ``settings`` (its hosts in its limit) on node ``name``, each event to ``handle`` in this thread;
    ``stop`` says when to give up, ``reached`` how the hosts were reached. What the node or ssh said last, if
    anything: why the job could not run, where it did not get to the playbook's recap (its hosts are then
    unreachable)."""
    node = access.node(name)
    _stage(access, staging)
    told = staging.with_name(f"{staging.name}.json")  # not in argv: the job's environment is nobody's business
    told.write_text(json.dumps(for_node(access, node, settings)))
    try:
        stream = run([sys.executable, "-c", TRANSMIT, str(staging), str(told)], reason=Reason.RUNNER_FAILED,
                     what="packing the job", env={"PATH": os.environ.get("PATH", os.defpath),
                                                  "TMPDIR": str(staging.parent)}).encode()
    finally:
        shutil.rmtree(staging / "project", ignore_errors=True)  # the stream holds it now
        told.unlink()
    modules = json.dumps({module: Path(sys.modules[module].__file__ or "").read_text() for module in _sent()})
    remote = shlex.join([node.python, "-c", LOADER, node.workspace_dir,
                         json.dumps({"ssh_options": list(access.ssh_options)})])
    payload = b"%d\n%s%d\n%s" % (len(modules.encode()), modules.encode(), len(stream), stream)
    with _ssh([*access.ssh, node.ssh, remote], payload) as (ssh, errors):
        assert ssh.stdout is not None
        arrived: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        said: list[str] = []

        def status(data: dict[str, Any], runner_config: Any) -> None:
            if data.get("job_explanation"):
                said.append(str(data["job_explanation"]).strip().splitlines()[0][:300])

        def queued(event: dict[str, Any]) -> bool:
            arrived.put(event)
            return False  # never written to disk: events hold diffs and secrets

        from ansible_runner.streaming import Processor
        processor = Processor(_input=ssh.stdout, event_handler=queued, status_handler=status,
                              private_data_dir=str(staging), ident=settings["ident"], quiet=True)
        worker = threading.Thread(target=processor.run, daemon=True)
        worker.start()
        learnt: list[str] = []
        while worker.is_alive() or not arrived.empty():
            if stop():  # the run's own error says why (a signal, its deadline, a newer revision)
                return None  # leaving closes the stream: the worker kills the playbook and wipes its directory
            with contextlib.suppress(queue.Empty):
                event = arrived.get(timeout=POLL_SECONDS)
                if event.get("event") == KNOWN_HOSTS_EVENT:
                    learnt.extend(str(line) for line in event.get("lines", ()))
                else:
                    handle(event)  # in this thread, as a local run's events (the store's connection is its own)
        _learn(access, learnt, reached())  # the worker's last event: only a job that ran to its end has it
    said.extend(errors)  # ssh, or the worker, says last why it could not run the job
    return f"execution node {name}: {said[-1]}" if said else None


def _stage(access: NodeAccess, staging: Path) -> None:
    """The job's directory as the node gets it: hard links where they can be (the workspace is one tmpfs)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    for name, path in access.shipped:
        target = staging / name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, symlinks=True, ignore=_not_shipped(path if name == "job" else None),
                            copy_function=_link_or_copy)
        elif path.exists():
            _link_or_copy(str(path), str(target))
    (staging / "env").mkdir(mode=0o700)
    # on the node too: the stdout artifact would hold the raw --diff, secrets unmasked
    (staging / "env" / "settings").write_text(json.dumps({"suppress_output_file": True, "pexpect_timeout": 0.5}))


def _not_shipped(job: Path | None) -> Callable[[str, list[str]], set[str]]:
    """What stays here: Python's caches, and at the top of the job's directory its ssh wrappers, temp files and
    sockets (the node makes its own)."""
    def ignored(directory: str, names: list[str]) -> set[str]:
        if job is None or Path(directory) != job:
            return {name for name in names if name == "__pycache__"}
        return {name for name in names if name in ("bin", "tmp", "cp", "__pycache__") or name.startswith("cp-")
                or (name.startswith(".") and name[1:4] in ("ssh", "sft", "scp"))}
    return ignored


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem (the plugins, a vault password file)
        shutil.copy2(source, target)


def _sent() -> tuple[str, ...]:
    for module in SENT:
        importlib.import_module(module)
    return SENT


@contextlib.contextmanager
def _ssh(argv: list[str], payload: bytes) -> Iterator[tuple[subprocess.Popen[bytes], deque[str]]]:
    """ssh to a node, fed ``payload`` then a heartbeat until we leave (the worker ends a job whose bastion falls
    silent or closes the stream); with the last lines its stderr said."""
    proc = subprocess.Popen(reaped(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={key: value for key, value in os.environ.items()
                                 if key in ("PATH", "HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK", "LANG")})
    done = threading.Event()
    errors: deque[str] = deque(maxlen=5)
    feeding = threading.Thread(target=_feed, args=(proc, payload, done), daemon=True)
    tail = threading.Thread(target=_tail, args=(proc, errors), daemon=True)
    feeding.start()
    tail.start()
    try:
        yield proc, errors
    finally:
        done.set()  # the stream ends: the worker stops whatever still runs and wipes its directory
        for ending in (proc.terminate, proc.kill):  # the reaper kills ssh and all it started
            try:
                proc.wait(STOP_GRACE)
                break
            except subprocess.TimeoutExpired:
                ending()
        proc.wait()
        tail.join(STOP_GRACE)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _feed(proc: subprocess.Popen[bytes], payload: bytes, done: threading.Event) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(OSError, ValueError):  # ssh gone: its stderr says why
        proc.stdin.write(payload)
        proc.stdin.flush()
        while not done.wait(HEARTBEAT):
            proc.stdin.write(b".")
            proc.stdin.flush()
    with contextlib.suppress(OSError):
        proc.stdin.close()


def _tail(proc: subprocess.Popen[bytes], lines: deque[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace").strip()
        if line and not line.startswith("Warning: Permanently added"):
            lines.append(line[:300])


def _learn(access: NodeAccess, lines: list[str], reached: Mapping[str, Connection]) -> None:
    """Under accept-new, the keys the node's ssh recorded for hosts of this job met for the first time join this
    bastion's known_hosts; nothing else a node says is taken (a marker, another host's key, a second key)."""
    if access.learn_keys is None or not lines:
        return
    specs = {how.address if how.port in (None, 22) else f"[{how.address}]:{how.port}" for how in reached.values()}
    kept = access.learn_keys.read_text().splitlines() if access.learn_keys.exists() else []
    known = {spec for spec in specs for line in kept if _names(line, spec)}
    new = [line for line in dict.fromkeys(lines)
           if len(line.split()) >= 3 and not line.startswith(("@", "#"))
           and (named := {spec for spec in specs if _names(line, spec)}) and not named & known
           and (line.startswith("|") or set(line.split()[0].split(",")) <= specs)]
    if new:
        with open(access.learn_keys, "a") as keys:
            keys.write("".join(f"{line}\n" for line in new))


def _names(line: str, spec: str) -> bool:
    """Whether a known_hosts line is for ``spec`` (``address`` or ``[address]:port``), hashed or not."""
    field = line.split(" ", 1)[0]
    if not field.startswith("|1|"):
        return spec in field.split(",")
    try:
        salt, digest = field[3:].split("|", 1)
        return hmac.compare_digest(hmac.new(base64.b64decode(salt), spec.encode(), "sha1").digest(),
                                   base64.b64decode(digest))
    except (ValueError, binascii.Error):
        return False
