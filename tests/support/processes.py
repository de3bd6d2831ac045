"""What runs and what is left on this machine: workspaces, process samples."""

from __future__ import annotations

import os
import subprocess
import threading
from itertools import pairwise
from pathlib import Path
from typing import Self


def running(command: str) -> bool:
    """Whether a process with exactly this command line runs (a lab host's processes are this machine's)."""
    return subprocess.run(["pgrep", "-f", f"^{command}$"], capture_output=True, check=False).returncode == 0


def workspaces(pid: int | None = None) -> set[Path]:
    """Controller workspaces on /dev/shm; of one controller process, when ``pid`` is given."""
    return set(Path("/dev/shm").glob(f"controller-{pid}-*" if pid else "controller-*"))


class _Sampler(threading.Thread):
    """A thread that samples /proc until the ``with`` block it is entered by ends."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


class ProcWatch(_Sampler):
    """Samples every process's argv and environment every ~50 ms, remembering any needle it sees."""

    def __init__(self, needles: list[str]) -> None:
        super().__init__()
        self.needles = [n.encode() for n in needles]
        self.found: set[str] = set()
        self.programs: set[str] = set()
        self.samples = 0

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.samples += 1
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for name in ("cmdline", "environ"):
                    try:
                        data = Path("/proc", pid, name).read_bytes()
                    except OSError:
                        continue  # gone already, or not ours to read
                    if name == "cmdline":
                        self.programs.update(os.path.basename(arg.decode(errors="replace"))
                                             for arg in data.split(b"\0"))
                    self.found.update(f"{name} of {pid}: {n.decode()}" for n in self.needles if n in data)


class PlaybookWatch(_Sampler):
    """Samples the ansible-playbook processes every ~20 ms: which inventories were played at the same moment, every
    ``--forks`` they were given, the artifact directories of ansible-runner each inventory's playbooks wrote to, and
    each process's parent and modes as its command line started it (``--syntax-check``, ``--check``), by pid."""

    def __init__(self) -> None:
        super().__init__()
        self.together: set[frozenset[str]] = set()  # the inventories of the playbooks alive at one moment
        self.forks: set[str] = set()
        self.artifacts: dict[str, set[str]] = {}
        self.seen: dict[int, tuple[int | None, frozenset[str]]] = {}

    def run(self) -> None:
        while not self.done.wait(0.02):
            inventories = set()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = [a.decode(errors="replace") for a in Path("/proc", pid, "cmdline").read_bytes().split(b"\0")]
                    environ = Path("/proc", pid, "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                playbook = any(a.endswith("/controller-ansible-playbook") for a in argv)  # not its reaper
                if not playbook or not _descends(int(pid), os.getpid()):
                    continue  # another test's (other workers play their own fleets at the same moment)
                started_by = parent(int(pid))
                if started_by is None:
                    continue  # gone since (a worker's fork ends in milliseconds): not taken for a process of its own
                artifacts = {value.decode() for key, _, value in (e.partition(b"=") for e in environ)
                             if key == b"AWX_ISOLATED_DATA_DIR"}
                # as first seen: a fork that outlives its playbook's process (mitogen's multiplexer, while it ends)
                # is handed to the reaper, and must not then count as a playbook of its own
                self.seen.setdefault(int(pid), (started_by, frozenset(argv) & {"--syntax-check", "--check"}))
                for flag, value in pairwise(argv):
                    if flag in ("-i", "--inventory"):
                        inventories.add(Path(value).name)
                        self.artifacts.setdefault(Path(value).name, set()).update(artifacts)
                    elif flag == "--forks":
                        self.forks.add(value)
            if inventories:
                self.together.add(frozenset(inventories))


    @property
    def modes(self) -> dict[int, frozenset[str]]:
        """The modes of each ansible-playbook process started, by pid (not of the workers it forked)."""
        return {pid: modes for pid, (ppid, modes) in self.seen.items() if ppid not in self.seen}


def parent(pid: int) -> int | None:
    """The parent of process ``pid``, read from /proc; None once it is gone."""
    try:
        return int(Path("/proc", str(pid), "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descends(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` was started, at any depth, by process ``ancestor``."""
    for _ in range(12):
        found = parent(pid)
        if found is None:
            return False
        pid = found
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False
