"""ansible-runner's worker for one job on an execution node, sent over ssh with mounts.py, reaper.py and
wrappers.py.

It needs only the standard library and ansible-runner there (the node has nothing of the controller).
The job arrives on stdin as ``LENGTH\\n`` and that many bytes of ``ansible-runner transmit``'s stream;
stdin then stays open: the bastion closing it (a stop, a deadline, the bastion gone) kills the playbook.
The job's private data dir, decrypted vars included, lives on a tmpfs and is wiped however the job ends;
one left by a worker killed outright is wiped by the next.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from controller.ansible.wrappers import write_wrappers
from controller.mounts import MEMORY_FILESYSTEMS, filesystem_type, orphaned
from controller.reaper import become_subreaper, kill_all

PREFIX = "controller-node-"
# what the bastion writes where a path on this node belongs: the job's directory, mitogen's strategy plugins
HERE, MITOGEN = "@CONTROLLER_NODE@", "@CONTROLLER_NODE_MITOGEN@"
HEARTBEAT = 5.0  # seconds between the bytes the bastion sends while a job runs
SILENCE = 30.0   # a bastion silent this long is gone (a partition): the job is stopped
KNOWN_HOSTS_EVENT = "controller_known_hosts"


def main(base: str, told: dict[str, Any]) -> int:
    """Run the job on stdin in a private directory under ``base``; the worker's exit status."""
    fstype = filesystem_type(base) if os.path.isdir(base) else "missing"
    if fstype not in MEMORY_FILESYSTEMS:
        print(f"workspace_dir {base} is on {fstype}, not tmpfs: the job's decrypted vars must never reach this "
              "node's disk", file=sys.stderr)
        return 3
    for left in orphaned(Path(base), PREFIX):  # by a worker killed outright
        shutil.rmtree(left, ignore_errors=True)
    become_subreaper()  # ssh masters that detach stay ours to kill
    root = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)
    try:
        os.mkdir(os.path.join(root, ".tmp"), 0o700)
        tempfile.tempdir = os.path.join(root, ".tmp")  # ansible-runner unpacks the job through a temp file
        length = int(sys.stdin.buffer.readline())
        job = sys.stdin.buffer.read(length)
        threading.Thread(target=_end_with_stdin, args=(root,), daemon=True).start()
        # the bastion's host-key options first, as on the bastion
        write_wrappers(Path(root, "job", "bin"), [option.replace(HERE, root) for option in told["ssh_options"]])
        status = _run(root, job)
    except Exception as exc:  # said last, in one line: the bastion reports the last line its ssh printed
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        kill_all()
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.flush()
    os._exit(status)  # not through interpreter shutdown: the thread that waits for the end of stdin is blocked


def _run(root: str, job: bytes) -> int:
    from ansible_runner.streaming import Worker

    class NodeWorker(Worker):  # type: ignore[misc]
        def update_paths(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            here = {HERE: root, MITOGEN: _mitogen()}
            kwargs["envvars"] = {key: _placed(value, here) for key, value in kwargs.get("envvars", {}).items()}
            kwargs["envvars"]["PATH"] = os.pathsep.join((os.path.join(root, "job", "bin"),
                                                         os.path.dirname(sys.executable),
                                                         os.environ.get("PATH", os.defpath)))
            kwargs["cmdline"] = _placed(kwargs.get("cmdline", ""), here)
            for key in ("ANSIBLE_LOCAL_TEMP", "ANSIBLE_SSH_CONTROL_PATH_DIR"):
                if key in kwargs["envvars"]:
                    os.makedirs(kwargs["envvars"][key], mode=0o700, exist_ok=True)
            result: dict[str, Any] = super().update_paths(kwargs)
            return result

        def artifacts_handler(self, artifact_dir: str) -> None:
            # the artifacts stay here and are wiped: only the host keys ssh learnt go back
            try:
                with open(os.path.join(root, "known_hosts"), errors="replace") as learnt:
                    lines = learnt.read().splitlines()
            except FileNotFoundError:  # none shipped (host key checking off, or none known yet) and none learnt
                lines = []
            self.event_handler({"event": KNOWN_HOSTS_EVENT, "counter": 1, "uuid": KNOWN_HOSTS_EVENT,
                                "lines": lines})

    worker = NodeWorker(_input=io.BytesIO(job), private_data_dir=root)
    worker.run()
    return 0 if worker.rc == 0 else 1


def _placed(value: str, here: dict[str, str]) -> str:
    for token, path in here.items():
        value = value.replace(token, path)
    return value


def _mitogen() -> str:
    import importlib.util
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or spec.origin is None:
        return "mitogen-is-not-installed-on-this-node"  # the strategy then fails to load, saying so
    return os.path.join(os.path.dirname(spec.origin), "plugins", "strategy")


def _end_with_stdin(root: str) -> None:
    """Stop the job when the bastion closes the stream (a stop, its deadline, the bastion killed) or falls silent
    (a partition: sshd may never notice)."""
    heard = [time.monotonic()]

    def listen() -> None:
        while os.read(0, 65536):  # the heartbeat (os.read: whatever came, not a full buffer)
            heard[0] = time.monotonic()
        heard[0] = 0.0

    threading.Thread(target=listen, daemon=True).start()
    while time.monotonic() - heard[0] < SILENCE:
        time.sleep(1)
    kill_all()
    shutil.rmtree(root, ignore_errors=True)
    os._exit(1)
