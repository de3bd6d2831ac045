"""A lab of real SSH hosts on one machine, for tests, molecule, the demo and benchmarks.

Each host is one ``sshd`` listening on its own loopback address, running as PID 1
of its own PID and mount namespace, with a per-host directory bind-mounted over
the managed path (``/srv``), and ``/dev/null`` over root's ``~/.bashrc``: bash sources
it for every ssh command, and this machine's may hang (a stale pyenv rehash lock did).
Killing the namespace's parent kills every session of that host, so no ssh
ControlMaster can reuse a dead host's processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.reaper import children, descendants

SSHD = "/usr/sbin/sshd"
MANAGED_PATH = "/srv"
DEFAULT_PORT = 2222
BASHRC = Path(pwd.getpwnam("root").pw_dir) / ".bashrc"

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile {authorized_keys}
PidFile none
MaxStartups 200:30:400
MaxSessions 200
LogLevel ERROR
Subsystem sftp internal-sftp
"""


class LabError(Exception):
    """The lab could not be started or stopped."""


@dataclass(frozen=True)
class Host:
    """One lab host: where it listens and the directory that is its ``/srv``."""

    name: str
    address: str
    port: int
    root: Path

    def path(self, managed: str) -> Path:
        """Where a path under the host's managed root (``/srv/...``) lies on this machine."""
        relative = Path(managed).relative_to(MANAGED_PATH)
        return self.root / relative


class Lab:
    """N sshd hosts on ``{prefix}.1 .. {prefix}.N``; a context manager that always cleans up."""

    def __init__(self, directory: Path, count: int, prefix: str = "127.0.2",
                 port: int = DEFAULT_PORT, die_with_parent: bool = True) -> None:
        if not 1 <= count <= 250:
            raise LabError(f"a lab holds 1 to 250 hosts, not {count}")
        self.directory = Path(directory).resolve()
        self.port = port
        self.die_with_parent = die_with_parent
        self.hosts = [
            Host(f"h{i}", f"{prefix}.{i}", port, self.directory / "hosts" / f"h{i}")
            for i in range(1, count + 1)
        ]
        self.private_key = self.directory / "id_ed25519"
        self.known_hosts = self.directory / "known_hosts"
        # ssh ControlPath sockets must fit in 108 bytes: a short directory per lab
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:10]
        self.control_dir = Path(tempfile.gettempdir()) / f"lab-cp-{digest}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Lab:
        """Start every host (stopping whatever an earlier start of this lab left running)."""
        self.stop()
        self._prepare()
        busy = [f"{h.address}:{h.port}" for h in self.hosts if _answers(h)]
        if busy:
            raise LabError(f"{', '.join(busy)} already in use (another lab? stop it with "
                           "`python -m lab down --dir DIR`)")
        for host in self.hosts:
            self._spawn(host)
        self._wait_listening(self.hosts)
        self._save_state()
        return self

    def stop(self) -> None:
        """Stop every host of this lab, including ones started by another process."""
        for pid in self._recorded_pids():
            _kill_namespace(pid)
        for proc in self._procs.values():
            _kill_namespace(proc.pid)
            proc.wait()
        self._procs.clear()
        (self.directory / "lab.json").unlink(missing_ok=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def stop_host(self, name: str) -> None:
        """Take one host down (its listener and every session it had)."""
        proc = self._procs.pop(name)
        _kill_namespace(proc.pid)
        proc.wait()
        self._save_state()

    def start_host(self, name: str) -> None:
        """Bring a stopped host back with the files it had."""
        host = self.host(name)
        self._spawn(host)
        self._wait_listening([host])
        self._save_state()

    def freeze_host(self, name: str) -> list[int]:
        """Stop every process of a host (SIGSTOP), as a hung disk or a stalled VM would; return them."""
        pids = descendants(self._procs[name].pid)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw_host(self, name: str) -> None:
        """Let a frozen host run again."""
        for pid in descendants(self._procs[name].pid):
            os.kill(pid, signal.SIGCONT)

    def host(self, name: str) -> Host:
        """The host called ``name`` (h1, h2, ...)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no host {name} in this lab")

    def ssh_args(self) -> list[str]:
        """ssh options that reach the lab's hosts with strict host key checking."""
        return [
            "-o", f"IdentityFile={self.private_key}",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
        ]

    def ssh(self, host: Host, command: str) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host over real SSH."""
        return subprocess.run(
            ["ssh", *self.ssh_args(), "-p", str(host.port), f"root@{host.address}", command],
            capture_output=True, text=True, timeout=30, check=False,
        )

    # -- internals ---------------------------------------------------------
    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation dir
        Path(MANAGED_PATH).mkdir(exist_ok=True)
        host_key = self.directory / "ssh_host_ed25519_key"
        for key in (host_key, self.private_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab",
                                "-f", str(key)], check=True)
        shutil.copyfile(f"{self.private_key}.pub", self.directory / "authorized_keys")
        public = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(
            "".join(f"[{h.address}]:{h.port} {' '.join(public)}\n" for h in self.hosts))
        for host in self.hosts:
            host.root.mkdir(parents=True, exist_ok=True)
            (self.directory / f"sshd_{host.name}.conf").write_text(SSHD_CONFIG.format(
                address=host.address, port=host.port, host_key=host_key,
                authorized_keys=self.directory / "authorized_keys"))

    def _spawn(self, host: Host) -> None:
        config = self.directory / f"sshd_{host.name}.conf"
        script = (f"{{ [ ! -f {BASHRC} ] || mount --bind /dev/null {BASHRC}; }} && "
                  f"mount --bind '{host.root}' {MANAGED_PATH} && exec {SSHD} -D -e -f '{config}'")
        log = open(self.directory / f"sshd_{host.name}.log", "ab")  # noqa: SIM115 - owned by sshd
        with log:
            self._procs[host.name] = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                 "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def _wait_listening(self, hosts: list[Host], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(hosts)
        while pending:
            host = pending[0]
            proc = self._procs[host.name]
            if proc.poll() is not None:
                log = (self.directory / f"sshd_{host.name}.log").read_text().strip()
                self.stop()
                raise LabError(f"sshd for {host.address}:{host.port} exited: {log[-300:]}")
            if _answers(host):
                pending.pop(0)
            elif time.monotonic() > deadline:
                self.stop()
                raise LabError(f"{host.address}:{host.port} did not listen within {timeout}s")
            else:
                time.sleep(0.02)

    def _save_state(self) -> None:
        state = {"pids": [p.pid for p in self._procs.values()],
                 "hosts": [[h.name, h.address, h.port, str(h.root)] for h in self.hosts]}
        (self.directory / "lab.json").write_text(json.dumps(state))

    def _recorded_pids(self) -> list[int]:
        state_file = self.directory / "lab.json"
        if not state_file.exists():
            return []
        own = {p.pid for p in self._procs.values()}
        pids: list[int] = json.loads(state_file.read_text())["pids"]
        return [pid for pid in pids if pid not in own and _is_lab_process(pid, self.directory)]


def _answers(host: Host) -> bool:
    try:
        with socket.create_connection((host.address, host.port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the process that started the lab dies (a crashed test run),
    # the kernel kills unshare, and --kill-child takes the whole namespace with it.
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _is_lab_process(pid: int, directory: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("unshare") and str(directory) in cmdline


def _kill_namespace(pid: int) -> None:
    # SIGKILL on unshare makes --kill-child kill sshd, PID 1 of the namespace, and the
    # kernel then kills every session in it. unshare ignores SIGTERM while it waits.
    # the namespace's PID 1 (sshd) can outlive unshare for a moment: wait for it too,
    # or a restart's readiness probe could be answered by the dying listener
    sshd = children(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    for waited in [pid, *sshd]:
        while time.monotonic() < deadline and _alive(waited):
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # our child, now reaped
    except ChildProcessError:
        pass  # started by another process: init reaps it
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
