"""`python -m bench.parallel`: two independent apps one after the other, or at once (``ansible.parallel_apps``).

The reference fleet's hosts are split into two apps of the same playbook (each with its own ``limit:``), which
depend on nothing. ``controller check`` of both is timed with ``parallel_apps: 1`` (the default: one app, then
the other) and ``parallel_apps: 2`` (both at once, each playbook with half of ``ansible.forks``), interleaved so
that noise hits them alike: wall time, and the CPU of everything the command starts (ssh and the hosts' own
processes run on this same machine, so a 2-core bench machine is the worst case for running at once).
``--update DIR`` puts the figures into DIR's benchmarks.*.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.fleet import BenchFleet
from bench.ways import base_env, compared, converged, run_record, sizes_command, timed
from lab import REAL, Lab
from lab.repository import make_age_key

PREFIX = "127.0.5"  # the bench's addresses, apart from the tests'
WAYS = {"one app, then the other (parallel_apps: 1)": 1, "both at once (parallel_apps: 2)": 2}


def two_apps(fleet: BenchFleet) -> None:
    """Split the fleet's one app in two halves of its hosts, each an app of its own, and push."""
    names = sorted((f"web{h.name[1:]}" for h in fleet.lab.hosts), key=lambda n: int(n[3:]))
    half = len(names) // 2
    apps = [{"name": f"half{n + 1}", "playbook": "playbooks/bench.yml", "inventory": "inventories/bench",
             "limit": ",".join(part)} for n, part in enumerate((names[:half], names[half:]))]
    fleet.write("gitops.yml", yaml.safe_dump({"apps": apps}))
    fleet.push("Two apps of half the hosts each")


def measure(root: Path, sizes: list[int], reps: int) -> dict[str, Any]:
    """Each way at each size, ``reps`` times in rotating order: wall and CPU seconds of the whole command."""
    started, results = time.time(), run_record(reps)
    key = make_age_key(root / "age")
    for hosts in sizes:
        with Lab(root / f"lab{hosts}", hosts, prefix=PREFIX, costs=REAL) as lab:
            fleet = BenchFleet(root / f"fleet{hosts}", lab, key)
            fleet.build()
            two_apps(fleet)
            converged(fleet, "parallel")
            configs = {name: fleet.variant(f"lanes{lanes}", parallel_apps=lanes) for name, lanes in WAYS.items()}
            results["sizes"][str(hosts)] = compared(configs, _check, reps)
    results["duration_minutes"] = round((time.time() - started) / 60, 1)
    return results


def _check(config: Path) -> dict[str, float]:
    """One ``controller check`` of both apps: its wall time and the machine's CPU time meanwhile."""
    before = _busy()
    run = timed([str(Path(sys.executable).parent / "controller"), "check"],
                {**base_env(), "CONTROLLER_CONFIG": str(config)})
    if run.code != 0:
        raise SystemExit(f"benchmark: a check exited {run.code}:\n{run.output[-3000:]}")
    return {"seconds": run.seconds, "cpu": _busy() - before}


def _busy() -> float:
    """Seconds of CPU this machine has spent, every process counted (the lab's hosts are this machine's)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sizes_command("parallel", __doc__, measure, reps=5)
