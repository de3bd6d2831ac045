"""The ways of checking a fleet that the benchmark compares, each timed as a real process."""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.fleet import BenchFleet
from lab import counting_ssh

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Timing:
    """One measured process: wall time, exit code, the peak RSS of the process itself and the largest of any
    process it started (MiB: the ansible-playbook of a check)."""

    seconds: float
    code: int
    peak_mib: float
    output: str
    child_peak_mib: float = 0.0


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 3600) -> Timing:
    """Run ``argv`` and time it, sampling its VmHWM (peak RSS) until it exits."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, child_peak = [0.0], [0.0]
    done = threading.Event()

    def sample() -> None:
        rounds = 0
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _hwm(proc.pid))
            except (OSError, ValueError):
                return
            if rounds % 10 == 0:  # the children less often: at 500 hosts there are hundreds of ssh processes
                child_peak[0] = max([child_peak[0], *(_hwm(child) for child in _descendants(proc.pid))])
            rounds += 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate(timeout=timeout)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return Timing(seconds, proc.returncode, peak[0], output, child_peak[0])


def _hwm(pid: int) -> float:
    """A process's peak RSS in MiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        try:
            children = Path(f"/proc/{queue.pop()}/task").glob("*/children")
            for listing in children:
                pids = [int(n) for n in listing.read_text().split()]
                found += pids
                queue += pids
        except OSError:
            continue
    return found


def base_env() -> dict[str, str]:
    keep = ("HOME", "LANG", "LC_ALL", "TERM", "USER")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("LANG", "C.UTF-8")
    return env


def ansible_playbook(fleet: BenchFleet, project: Path, *, pipelining: bool) -> Timing:
    """``ansible-playbook --check --diff`` with Ansible's defaults (forks 5, linear, no pipelining)."""
    cfg = project.parent / "defaults.cfg"
    cfg.write_text(
        f"[defaults]\nroles_path = {project / 'roles'}\ninterpreter_python = /usr/bin/python3\n"
        f"retry_files_enabled = False\ngathering = explicit\nprivate_key_file = {fleet.lab.private_key}\n")
    env = {**base_env(), "ANSIBLE_CONFIG": str(cfg),
           "ANSIBLE_SSH_EXTRA_ARGS": f"-o UserKnownHostsFile={fleet.lab.known_hosts}",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(project.parent / "cp")}
    if pipelining:
        env["ANSIBLE_PIPELINING"] = "True"
    return timed([str(BIN / "ansible-playbook"), "--check", "--diff", "-i", "inventories/bench",
                  "playbooks/bench.yml"], env, cwd=project)


def raw_runner(fleet: BenchFleet, project: Path) -> Timing:
    """ansible-runner's Python API with the controller's exact settings, no pipeline around it."""
    env = {**base_env(), "PYTHONPATH": str(ROOT)}
    return timed([sys.executable, "-m", "bench.raw_runner", str(fleet.config), str(project)], env)


def controller(fleet: BenchFleet, *args: str) -> Timing:
    """The real ``controller`` command against the fleet's config."""
    env = {**base_env(), "CONTROLLER_CONFIG": str(fleet.config)}
    return timed([str(BIN / "controller"), *args], env)


def verify_look(fleet: BenchFleet) -> dict[str, int]:
    """One ``controller verify --json`` through an ssh that counts its connections: what each look read,
    and whether it is still one connection per host."""
    counting, calls = counting_ssh(fleet.root)
    calls.unlink(missing_ok=True)
    env = {**base_env(), "CONTROLLER_CONFIG": str(fleet.config), "PATH": counting["PATH"]}
    done = subprocess.run([str(BIN / "controller"), "verify", "--json"], env=env, capture_output=True, text=True,
                          check=False)
    verdicts = [v for app in json.loads(done.stdout)["apps"] for v in app["verify"] or []]
    return {"hosts": len(verdicts), "verified": sum(1 for v in verdicts if v["verified"]),
            "connections": len(calls.read_text().splitlines()) if calls.exists() else 0,
            "paths": max(v["paths"] for v in verdicts), "resources": max(v["resources"] for v in verdicts)}


def interleaved(ways: Mapping[str, Callable[[], dict[str, float]]], reps: int) -> dict[str, dict[str, float]]:
    """Each way ``reps`` times in rotating order, so that noise hits them alike; each figure's median per way."""
    names = list(ways)
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            measured[name].append(ways[name]())
    return {name: {figure: median(run[figure] for run in runs) for figure in runs[0]}
            for name, runs in measured.items()}


def run_record(reps: int) -> dict[str, Any]:
    """What a bench run records beside its figures (under ``sizes``): repetitions, the load at the start, the day
    and the cores."""
    return {"reps": reps, "load": round(os.getloadavg()[0], 1), "measured_at": time.strftime("%Y-%m-%d"),
            "cores": os.cpu_count(), "sizes": {}}


def converged(fleet: BenchFleet, bench: str) -> None:
    """The fleet converged by one first ``controller sync``; a benchmark that cannot get there stops."""
    print(f"bench.{bench}: {len(fleet.lab.hosts)} lab hosts: converging once", flush=True)
    first = controller(fleet, "sync")
    if first.code != 0:
        raise SystemExit(f"benchmark: the first sync exited {first.code}:\n{first.output[-3000:]}")


def compared(configs: Mapping[str, Path], check: Callable[[Path], dict[str, float]],
             reps: int) -> dict[str, dict[str, float]]:
    """``check`` under each bastion config: once first (each config's store starts empty, and every timed run must
    be alike), then ``reps`` times interleaved; each figure's median per config, printed too."""
    for config in configs.values():
        check(config)
    found = interleaved({name: functools.partial(check, config) for name, config in configs.items()}, reps)
    print(json.dumps(found, indent=1), flush=True)
    return found


def sizes_command(key: str, doc: str | None, measure: Callable[[Path, list[int], int], dict[str, Any]],
                  reps: int) -> None:
    """`python -m bench.KEY`: ``measure`` at the fleet sizes of --hosts, --reps times each; --update DIR puts the
    figures under ``key`` into DIR's benchmarks.*."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{key}", description=doc)
    parser.add_argument("--hosts", default="10,50", help="comma-separated fleet sizes (default 10,50)")
    parser.add_argument("--reps", type=int, default=reps, help=f"repetitions per way (default {reps})")
    parser.add_argument("--update", type=Path, metavar="DIR",
                        help="put the figures into DIR/benchmarks.json and write DIR's benchmarks.md again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"bench-{key}-") as tmp:
        results = measure(Path(tmp), [int(n) for n in args.hosts.split(",")], args.reps)
    print(json.dumps(results, indent=2))
    if args.update:
        from bench import report
        report.update(args.update, key, results)
