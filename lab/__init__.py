"""A lab of real SSH hosts on one machine, for tests, molecule, the demo and benchmarks.

Each host is a whole machine: one ``sshd`` on its own loopback address, PID 1 of its own
PID, mount and UTS namespaces, chrooted into a copy-on-write overlay whose lower layer is
this machine's root file system and whose upper layer is the host's own directory. Roles
can install packages (local .debs: unless ``Costs.apt_lists``, a host has no package lists),
add users and edit ``/etc`` there; this machine never sees it. The
host has its own hostname, ``/proc``, ``/tmp`` and ``/run``, a per-host directory over the
managed path (``/srv``), an empty root ``~/.bashrc`` (bash sources it for every ssh command,
and this machine's once hung on a stale pyenv rehash lock), and a user ``deploy`` with
passwordless sudo. The overlay mounts live only in the host's mount namespace, so they
die with it; killing the namespace's parent kills every session of that host, so no ssh
ControlMaster can reuse a dead host's processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.reaper import children, descendants
from lab import compiled

SSHD = "/usr/sbin/sshd"
MANAGED_PATH = "/srv"
DEFAULT_PORT = 2222
DEPLOY_USER = "deploy"
# the lab's sshd files inside each host; a role managing /etc/ssh/sshd_config does not touch them
LAB_ETC = "/etc/ssh/lab"
APT_LISTS = "/var/lib/lab/apt-lists"  # an empty list of packages to install from (Costs.apt_lists)

SSHD_CONFIG = f"""\
HostKey {LAB_ETC}/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
MaxStartups 200:30:400
MaxSessions 200
LogLevel ERROR
Subsystem sftp internal-sftp
Match User root
    AuthorizedKeysFile {LAB_ETC}/authorized_keys
"""


@dataclass(frozen=True)
class Costs:
    """What a lab's hosts cost beyond a real server's behaviour: the test suite trims both (LEAN), the benchmarks,
    whose hosts stand in for real servers when something is timed, keep them (REAL)."""

    # the key exchanges sshd offers (None: OpenSSH's default); 9.2's default, sntrup761x25519, costs the client
    # about 130 ms of CPU per connection (15 ms with curve25519), and the test suite opens thousands
    kex: str | None
    # whether the hosts see this machine's apt package lists: with them (and this image's apt config, which keeps
    # no pkgcache.bin), every apt cache open parses them all, ~1 s of CPU; without, a host is a machine that
    # never ran `apt-get update`: installed packages and local .debs only, opened in under 0.1 s
    apt_lists: bool
    # whether the hosts' Python keeps the code it compiles (lab/compiled.py): mitogen sends its own and Ansible's
    # modules as source, and a host's interpreters compiled them in every run, about a third of their CPU
    compiled: bool


LEAN = Costs(kex="curve25519-sha256,curve25519-sha256@libssh.org", apt_lists=False, compiled=True)
REAL = Costs(kex=None, apt_lists=True, compiled=False)
# where Debian's python3 finds a .pth file at start-up, on the hosts (the bastion's venv does not look there)
SITE_PACKAGES = "/usr/lib/python3/dist-packages"


class LabError(Exception):
    """The lab could not be started or stopped."""


@dataclass(frozen=True)
class Host:
    """One lab host: where it listens, the directory that is its ``/srv``, and its machine's layers."""

    name: str
    address: str
    port: int
    root: Path

    @property
    def machine(self) -> Path:
        """The host's copy-on-write layer (``upper``), overlay work dir and mount point."""
        return self.root.with_name(f"{self.name}.machine")

    def path(self, path: str) -> Path:
        """Where ``path`` on the host can be read or written from this machine.

        ``/srv/...`` is the host's directory (there even while the host is down); any other
        path goes through ``/proc/PID/root`` of the host's PID 1, which sees its merged root.
        """
        inside = Path(path)
        if inside == Path(MANAGED_PATH) or Path(MANAGED_PATH) in inside.parents:
            return self.root / inside.relative_to(MANAGED_PATH)
        try:
            pid = int((self.machine / "pid").read_text())
        except FileNotFoundError:
            raise LabError(f"{self.name} is not running: {path} cannot be read") from None
        return Path(f"/proc/{pid}/root") / inside.relative_to("/")


MAX_HOSTS = 1000
PER_BLOCK = 250  # hosts per /24 of loopback addresses


def address(prefix: str, number: int) -> str:
    """Host ``number``'s address: ``{prefix}.{number}`` up to 250, then on through the next /24s."""
    block, last = divmod(number - 1, PER_BLOCK)
    first, second, third = prefix.split(".")
    if int(third) + block > 255:
        raise LabError(f"prefix {prefix} has no room for host {number}: pick a lower third octet")
    return f"{first}.{second}.{int(third) + block}.{last + 1}"


class Lab:
    """N sshd hosts on ``{prefix}.1 .. {prefix}.N`` (past 250, on the next /24s: host 251 is ``{prefix+1}.1``); a
    context manager that always cleans up."""

    def __init__(self, directory: Path, count: int, prefix: str = "127.0.2",
                 port: int = DEFAULT_PORT, die_with_parent: bool = True, shared: tuple[Path, ...] = (),
                 costs: Costs = LEAN) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise LabError(f"a lab holds 1 to {MAX_HOSTS} hosts, not {count}")
        self.directory = Path(directory).resolve()
        self.port = port
        self.die_with_parent = die_with_parent
        self.shared = shared  # this machine's directories every host sees, read-only (a venv an execution node runs)
        self.costs = costs
        self.hosts = [
            Host(f"h{i}", address(prefix, i), port, self.directory / "hosts" / f"h{i}")
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
        for host in self.hosts:
            (host.machine / "pid").unlink(missing_ok=True)
        (self.directory / "lab.json").unlink(missing_ok=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)

    def stop_host(self, name: str) -> None:
        """Take one host down (its listener and every session it had)."""
        proc = self._procs.pop(name)
        _kill_namespace(proc.pid)
        proc.wait()
        (self.host(name).machine / "pid").unlink(missing_ok=True)
        self._save_state()

    def start_host(self, name: str) -> None:
        """Bring a stopped host back with the files it had."""
        host = self.host(name)
        self._spawn(host)
        self._wait_listening([host])
        self._save_state()

    def freeze_host(self, name: str) -> list[int]:
        """Stop every process of a host (SIGSTOP), as a hung disk or a stalled VM would; return them."""
        stopped = []
        for pid in descendants(self._procs[name].pid):
            with contextlib.suppress(ProcessLookupError):  # ended since it was listed: nothing left to stop
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        return stopped

    def thaw_host(self, name: str) -> None:
        """Let a frozen host run again."""
        for pid in descendants(self._procs[name].pid):
            with contextlib.suppress(ProcessLookupError):
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

    def ssh(self, host: Host, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host over real SSH."""
        return subprocess.run(
            ["ssh", *self.ssh_args(), "-p", str(host.port), f"{user}@{host.address}", command],
            capture_output=True, text=True, timeout=30, check=False,
        )

    # -- internals ---------------------------------------------------------
    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.control_dir.mkdir(mode=0o700, exist_ok=True)
        Path(MANAGED_PATH).mkdir(exist_ok=True)  # the lower layer holds the hosts' mount point
        host_key = self.directory / "ssh_host_ed25519_key"
        for key in (host_key, self.private_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lab",
                                "-f", str(key)], check=True)
        public = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(
            "".join(f"[{h.address}]:{h.port} {' '.join(public)}\n" for h in self.hosts))
        layer = self._first_layer(host_key)
        for host in self.hosts:
            host.root.mkdir(parents=True, exist_ok=True)
            upper = host.machine / "upper"
            if not upper.exists():  # a restarted lab keeps what roles did to its hosts
                (host.machine / "work").mkdir(parents=True)
                (host.machine / "merged").mkdir()
                _copy(layer, upper)
                _put(upper, "/etc/hostname", f"{host.name}\n", 0o644)
                # sudo and facts look the hostname up; no resolver to wait for
                _put(upper, "/etc/hosts", f"127.0.0.1 localhost\n{host.address} {host.name}\n", 0o644)
            else:  # the lab's own sshd files follow the lab's keys
                _copy(layer / LAB_ETC.lstrip("/"), upper / LAB_ETC.lstrip("/"))

    def _first_layer(self, host_key: Path) -> Path:
        """What every host's upper layer starts with: the lab's sshd files and the ``deploy`` user."""
        layer = self.directory / "layer"
        shutil.rmtree(layer, ignore_errors=True)
        public_key = Path(f"{self.private_key}.pub").read_text()
        kex = f"KexAlgorithms {self.costs.kex}\n" if self.costs.kex else ""
        _put(layer, f"{LAB_ETC}/sshd_config", kex + SSHD_CONFIG, 0o644)
        if not self.costs.apt_lists:
            _put(layer, f"{APT_LISTS}/partial/.keep", "", 0o644)
            _put(layer, "/etc/apt/apt.conf.d/99lab-lists", f'Dir::State::Lists "{APT_LISTS}/";\n', 0o644)
        _put(layer, f"{LAB_ETC}/ssh_host_ed25519_key", host_key.read_text(), 0o600)
        _put(layer, f"{LAB_ETC}/authorized_keys", public_key, 0o644)
        root_home = pwd.getpwnam("root").pw_dir
        _put(layer, f"{root_home}/.bashrc", "", 0o644)
        deploy = _add_user(layer, DEPLOY_USER, public_key)
        if self.costs.compiled:
            _put(layer, f"{SITE_PACKAGES}/_lab_compiled.py", Path(compiled.__file__).read_text(), 0o644)
            _put(layer, f"{SITE_PACKAGES}/_lab_compiled.pth", "import _lab_compiled\n", 0o644)
            for uid, gid in ((0, 0), deploy):  # root's interpreter and deploy's, which relays to it
                _put(layer, f"{compiled.DIRECTORY}/{uid}", None, 0o700, (uid, gid))
        return layer

    def _spawn(self, host: Host) -> None:
        machine, root = (shlex.quote(str(p)) for p in (host.machine, host.root))
        merged = f"{machine}/merged"
        # every mount below is private to the host's mount namespace and dies with it
        script = " && ".join((
            f"mount -t overlay overlay -o lowerdir=/,upperdir={machine}/upper,workdir={machine}/work {merged}",
            f"mount -t proc proc {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {merged}/dev/shm",
            f"mount --rbind /sys {merged}/sys",
            f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {merged}/tmp",
            f"mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs {merged}/run",
            f"mkdir -m 0755 {merged}/run/sshd",  # sshd's privilege separation directory
            *(f"mkdir -p {merged}{shlex.quote(str(path))} && mount --bind -o ro {shlex.quote(str(path))} "
              f"{merged}{shlex.quote(str(path))}" for path in self.shared),
            f"mount --bind {root} {merged}{MANAGED_PATH}",
            f"hostname {host.name}",
            f"exec chroot {merged} {SSHD} -D -e -f {LAB_ETC}/sshd_config "
            f"-o ListenAddress={host.address}:{host.port}",
        ))
        log = open(self.directory / f"sshd_{host.name}.log", "ab")  # noqa: SIM115 - owned by sshd
        with log:
            self._procs[host.name] = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child",
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
                # the namespace's PID 1 (sshd by now): its /proc/PID/root is the host's root
                (host.machine / "pid").write_text(str(children(proc.pid)[0]))
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


def counting_ssh(directory: Path) -> tuple[dict[str, str], Path]:
    """An ``ssh`` first on PATH that logs each connection's destination (the argument after ``--``, as
    verify's look gives it) to the returned file, the key exchange it asks for to ``FILE.kex``, and a line for
    every ssh started, however it names its destination (Ansible's, mitogen's), to ``FILE.all``.

    It starts the real ssh as plain ``ssh``, as ssh itself would be: a ProxyJump's ssh is found on PATH again.
    """
    bin_dir, log = directory / "counting-bin", directory / "ssh-calls"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/bash\necho started >> {log}.all\n'
                       f'prev=\nfor arg in "$@"; do [ "$prev" = -- ] && echo "$arg" >> {log}; '
                       f'case "$arg" in KexAlgorithms=*) echo "$arg" >> {log}.kex;; esac; '
                       f'prev="$arg"; done\nexec -a ssh {shutil.which("ssh")} "$@"\n')
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def _copy(source: Path, target: Path) -> None:
    """Copy a layer with owners and modes (shutil's copies drop owners: ``deploy`` needs its key)."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--", f"{source}/.", str(target)], check=True)


def _put(layer: Path, path: str, content: str | None, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    """Write ``path`` into an upper layer (``content`` None: a directory); new parent directories copy this
    machine's (mode, owner): an upper directory hides the lower one's metadata, so ``/root`` must stay 0700."""
    target = layer / path.lstrip("/")
    layer.mkdir(parents=True, exist_ok=True)
    for parent in reversed(Path(path).parents[:-1]):
        made = layer / str(parent).lstrip("/")
        if not made.exists():
            made.mkdir()
            if parent.exists():
                meta = parent.stat()
                os.chmod(made, meta.st_mode & 0o7777)
                os.chown(made, meta.st_uid, meta.st_gid)
    if content is None:
        target.mkdir(exist_ok=True)
    else:
        target.write_text(content)
    os.chmod(target, mode)
    os.chown(target, *owner)


def _add_user(layer: Path, name: str, public_key: str) -> tuple[int, int]:
    """Add a user with passwordless sudo and the lab's key, by writing the account files into the layer; return
    its uid and gid.

    Measured under load: ~1.6 ms for the whole layer, against ~90 ms for one ``useradd`` chrooted into an
    overlay; and it is done once per lab, then copied into each host.
    """
    def lines(path: str) -> list[str]:
        return Path(path).read_text().splitlines()

    passwd, group = lines("/etc/passwd"), lines("/etc/group")
    if any(line.split(":")[0] == name for line in passwd):  # the machine has one already: use it
        known = pwd.getpwnam(name)
        uid, gid, home = known.pw_uid, known.pw_gid, known.pw_dir
    else:
        taken = {int(line.split(":")[2]) for line in passwd + group if line.count(":") >= 3}
        uid = gid = next(i for i in range(1000, 60000) if i not in taken)
        home = f"/home/{name}"
        accounts = {
            "/etc/passwd": f"{name}:x:{uid}:{gid}::{home}:/bin/bash",
            "/etc/group": f"{name}:x:{gid}:",
            "/etc/shadow": f"{name}:*:19000:0:99999:7:::",  # '*': no password, yet not locked for sshd
            "/etc/gshadow": f"{name}:!::",
        }
        for path, line in accounts.items():
            meta = Path(path).stat()
            _put(layer, path, "\n".join([*lines(path), line]) + "\n", meta.st_mode & 0o7777,
                 (meta.st_uid, meta.st_gid))
    _put(layer, f"{home}/.ssh/authorized_keys", public_key, 0o600, (uid, gid))
    for directory in (f"{home}/.ssh", home):
        os.chmod(layer / directory.lstrip("/"), 0o700)
        os.chown(layer / directory.lstrip("/"), uid, gid)
    _put(layer, f"/etc/sudoers.d/{name}", f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    return uid, gid


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
