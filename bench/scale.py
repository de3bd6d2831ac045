"""`python -m bench.scale --hosts 50,200,500`: one bastion's costs as the fleet grows, in one run.

At each size a fresh lab and the reference fleet (bench/fleet.py), converged once by a first ``controller
sync`` (timed), then, interleaved: a no-change ``controller check`` (every host fully checked), ``controller
verify`` (one look per host against its manifest) and ``controller sync --verify-first``. Wall time, the peak
RSS of the ``controller`` process and the largest of the processes it starts (the ansible-playbook of a
check), the whole machine's CPU time (the lab's hosts run on it too) and the bastion side's alone (the
command and every process it started: what a real bastion spends, its hosts running elsewhere).
Ansible-playbook with its defaults (forks 5, linear) runs at the smallest size only: at 500 hosts it would
take over an hour; the report extrapolates it per host, and says so. The fleet's ``ansible.timeout`` is 30 s
(CONNECT_TIMEOUT says why). ``--update DIR`` puts the figures into DIR's benchmarks.*.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.fleet import BenchFleet
from bench.ways import Timing, ansible_playbook, controller, interleaved, sizes_command
from lab import REAL, Lab
from lab.repository import make_age_key

PREFIX = "127.0.5"  # the bench's addresses, apart from the tests'
# ansible.timeout at every size: the lab's hosts are sshd processes on the bastion's own cores, and with 200 of
# them a host's ssh handshake, queued behind the others', took longer than the default 10 s (a first sync at 200
# hosts on 2 cores lost a host to it); real hosts answer on their own CPUs
CONNECT_TIMEOUT = 30


def cpu_seconds() -> float:
    """The whole machine's busy CPU time so far (every process: the controller, Ansible, ssh, the lab's hosts)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def bastion_seconds() -> float:
    """The CPU time of this process's children that have ended: a command measured and everything it started
    (Ansible, its workers, ssh, bash), not the lab's hosts, which are this process's children too but run on."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def measured(run: Callable[[], Timing], what: str) -> dict[str, float]:
    """One run of ``run``: wall, the machine's and the bastion side's CPU seconds, peak MiB of the controller and
    of its playbook."""
    before, bastion = cpu_seconds(), bastion_seconds()
    timing = run()
    cpu, bastion = cpu_seconds() - before, bastion_seconds() - bastion
    if timing.code != 0:
        raise SystemExit(f"benchmark: {what} exited {timing.code}:\n{timing.output[-3000:]}")
    return {"seconds": timing.seconds, "cpu": cpu, "bastion_cpu": bastion, "peak_mib": timing.peak_mib,
            "child_peak_mib": timing.child_peak_mib}


def measure(tmp: Path, sizes: list[int], reps: int) -> dict[str, Any]:
    """Every size in turn (see the module's docstring)."""
    key = make_age_key(tmp / "age")
    results: dict[str, Any] = {"sizes": {}, "reps": reps, "cores": os.cpu_count(),
                               "measured_at": time.strftime("%Y-%m-%d"), "load": round(os.getloadavg()[0], 1)}
    for hosts in sizes:
        with Lab(tmp / f"lab{hosts}", hosts, prefix=PREFIX, costs=REAL) as lab:
            fleet = BenchFleet(tmp / f"fleet{hosts}", lab, key)
            fleet.build()
            config = yaml.safe_load(fleet.config.read_text())
            config["ansible"] = {**config.get("ansible", {}), "timeout": CONNECT_TIMEOUT}
            fleet.config.write_text(yaml.safe_dump(config))
            try:
                size = one_size(fleet, reps, plain=hosts == sizes[0])
            except SystemExit as failure:  # the sizes measured so far stand; the report says where it stopped
                results["failed"] = {"hosts": hosts, "error": str(failure).splitlines()[0]}
                print(f"bench: {hosts} hosts failed: {failure}", flush=True)
                break
            results["sizes"][str(hosts)] = size
            print(f"bench: {hosts} hosts: {json.dumps(size)}", flush=True)
    return results


def one_size(fleet: BenchFleet, reps: int, *, plain: bool) -> dict[str, Any]:
    """The first sync, then each way ``reps`` times interleaved; ``plain``: ansible-playbook's defaults too."""
    size: dict[str, Any] = {"first sync": measured(lambda: controller(fleet, "sync"), "the first sync")}
    ways = {name: (lambda args=args, name=name: measured(lambda: controller(fleet, *args), name))
            for name, args in (("controller check", ("check",)), ("controller verify", ("verify",)),
                               ("controller sync --verify-first", ("sync", "--verify-first")))}
    size.update(interleaved(ways, reps))
    if plain:
        project = fleet.plaintext_project()
        try:
            size["ansible-playbook"] = measured(lambda: ansible_playbook(fleet, project, pipelining=False),
                                                "ansible-playbook")
        finally:
            shutil.rmtree(project.parent, ignore_errors=True)
    return size


if __name__ == "__main__":
    sizes_command("scale", __doc__, measure, reps=3)
