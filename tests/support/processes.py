"""What runs and what is left on this machine: workspaces, process samples."""

from __future__ import annotations

import os
import subprocess
import threading
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
