"""What runs and what is left on this machine: workspaces, process samples."""

from __future__ import annotations

import os
import subprocess
import threading
from itertools import pairwise
from pathlib import Path


def running(command: str) -> bool:
    """Whether a process with exactly this command line runs (a lab host's processes are this machine's)."""
    return subprocess.run(["pgrep", "-f", f"^{command}$"], capture_output=True, check=False).returncode == 0


def workspaces(pid: int | None = None) -> set[Path]:
    """Controller workspaces on /dev/shm; of one controller process, when ``pid`` is given."""
    return set(Path("/dev/shm").glob(f"controller-{pid}-*" if pid else "controller-*"))


class ProcWatch(threading.Thread):
    """Samples every process's argv and environment every ~50 ms, remembering any needle it sees."""

    def __init__(self, needles: list[str]) -> None:
        super().__init__(daemon=True)
        self.needles = [n.encode() for n in needles]
        self.found: set[str] = set()
        self.programs: set[str] = set()
        self.samples = 0
        self.done = threading.Event()

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


class PlaybookWatch(threading.Thread):
    """Samples the ansible-playbook processes every ~20 ms: which inventories were played at the same moment, every
    ``--forks`` they were given, and the artifact directories of ansible-runner each inventory's playbooks wrote to."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.together: set[frozenset[str]] = set()  # the inventories of the playbooks alive at one moment
        self.forks: set[str] = set()
        self.artifacts: dict[str, set[str]] = {}
        self.done = threading.Event()

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
                artifacts = {value.decode() for key, _, value in (e.partition(b"=") for e in environ)
                             if key == b"AWX_ISOLATED_DATA_DIR"}
                for flag, value in pairwise(argv):
                    if flag in ("-i", "--inventory"):
                        inventories.add(Path(value).name)
                        self.artifacts.setdefault(Path(value).name, set()).update(artifacts)
                    elif flag == "--forks":
                        self.forks.add(value)
            if inventories:
                self.together.add(frozenset(inventories))


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
