"""`python -m bench [--quick]`: measure the controller against plain Ansible, side by side, in one run.

Writes docs/benchmarks.json, docs/benchmarks.md and docs/benchmarks.png (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import bigrepo, dashboard, latency, report, scale
from bench.fleet import BenchFleet
from bench.ways import Timing, ansible_playbook, controller, raw_runner, verify_look
from lab import REAL, Lab
from lab.repository import make_age_key

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "127.0.5"  # the tests use 127.0.2-127.0.6's low addresses; keep benchmarks apart


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: minutes, not an hour")
    parser.add_argument("--hosts", default=None, help="comma-separated fleet sizes (default 10,50; quick 3,10)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per way (default 3; quick 1)")
    parser.add_argument("--slow-reps", type=int, default=2,
                        help="repetitions of the two plain ansible-playbook ways (default 2: at 50 hosts one "
                             "run with Ansible's defaults takes about nine minutes)")
    parser.add_argument("--scale", default=None,
                        help="fleet sizes of one bastion's scale run, one repetition each (default 50,200,500: "
                             "about two hours; quick 3,10; none to skip it)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the results go")
    args = parser.parse_args()
    sizes = [int(n) for n in (args.hosts or ("3,10" if args.quick else "10,50")).split(",")]
    reps = args.reps or (1 if args.quick else 3)
    grown = args.scale or ("3,10" if args.quick else "50,200,500")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = run(Path(tmp), sizes, reps, min(args.slow_reps, reps), quick=args.quick,
                      scale_sizes=[] if grown == "none" else [int(n) for n in grown.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out)
    print(f"wrote {args.out / 'benchmarks.md'}, benchmarks.png, benchmarks.json")


def run(tmp: Path, sizes: list[int], reps: int, slow_reps: int, *, quick: bool,
        scale_sizes: list[int]) -> dict[str, Any]:
    started = time.time()
    load = [round(x, 1) for x in os.getloadavg()]  # other work on the machine shows in every way's times
    key = make_age_key(tmp / "age")
    results: dict[str, Any] = {"machine": machine(), "reps": reps, "slow_reps": slow_reps, "quick": quick,
                               "sizes": {}}
    long_loop = 100 if quick else 300
    for hosts in sizes:
        with Lab(tmp / f"lab{hosts}", hosts, prefix=PREFIX, costs=REAL) as lab:
            fleet = BenchFleet(tmp / f"fleet{hosts}", lab, key)
            fleet.build()
            size: dict[str, Any] = results["sizes"].setdefault(str(hosts), {})
            _say(f"{hosts} hosts: converging once")
            _expect(controller(fleet, "sync"), 0, "the first sync")
            size["check"] = checks(fleet, reps, slow_reps)
            size["verify_look"] = verify_look(fleet)
            size["sync_one_line_change"] = []
            for rep in range(reps):
                fleet.set_defaults(f"v{rep}")  # the push is not part of the timing
                size["sync_one_line_change"].append(_expect(controller(fleet, "sync"), 0, "sync").seconds)
            size["only_if_changed"] = [
                _expect(controller(fleet, "sync", "--only-if-changed"), 0, "sync --only-if-changed",
                        needle="nothing to do").seconds for _ in range(reps)]
            _say(f"{hosts} hosts: hand edit to detected and corrected, watch verifying every 10 s")
            size["verify_latency"] = latency.verify_latency(fleet, reps=max(reps, 3), interval=2 if quick else 10)
            if hosts == sizes[0]:
                _say(f"{hosts} hosts: watch latency")
                results["watch"] = latency.watch_latency(fleet, reps=max(reps, 3))
                _say(f"{hosts} hosts: a long run ({long_loop} loop items per host)")
                fleet.set_defaults("long", loop=long_loop)
                _expect(controller(fleet, "sync"), 0, "sync of the long run")
                long = [_expect(controller(fleet, "check"), 0, "check of the long run") for _ in range(reps)]
                results["long_run"] = {"hosts": hosts, "loop_items": long_loop,
                                       "events": hosts * long_loop,
                                       "peak_mib": [t.peak_mib for t in long], "seconds": [t.seconds for t in long]}
    _say("large repository: fetch + snapshot")
    files, commits = (2000, 200) if quick else (10000, 1000)
    results["large_repo"] = {"files": files, "commits": commits,
                             **bigrepo.fetch_and_snapshot(tmp / "large", files, commits, max(reps, 3))}
    _say("dashboard: every page at 50 hosts and 5,000 runs")
    results["dashboard"] = dashboard.measure(tmp / "dashboard")
    if scale_sizes:
        _say(f"scale: {', '.join(map(str, scale_sizes))} hosts, one run each way")
        results["scale"] = scale.measure(tmp / "scale", scale_sizes, 1)
    results["duration_minutes"] = round((time.time() - started) / 60, 1)
    results["load"] = {"start": load, "end": [round(x, 1) for x in os.getloadavg()]}
    return results


def checks(fleet: BenchFleet, reps: int, slow_reps: int) -> dict[str, list[dict[str, float]]]:
    """Every way of checking the converged fleet, interleaved so that noise hits them all alike."""
    project = fleet.plaintext_project()
    pinned = fleet.variant("pinned", cpu_pinning=True)
    ways: dict[str, Callable[[], Timing]] = {
        "ansible-playbook": lambda: ansible_playbook(fleet, project, pipelining=False),
        "ansible-playbook+pipelining": lambda: ansible_playbook(fleet, project, pipelining=True),
        "ansible-runner": lambda: raw_runner(fleet, project),
        "controller check": lambda: controller(fleet, "check"),
        "controller check, CPU pinned": lambda: controller(fleet, "check", "--config", str(pinned)),
        "controller verify": lambda: controller(fleet, "verify"),
        "controller sync --verify-first": lambda: controller(fleet, "sync", "--verify-first"),
    }
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    try:
        for rep in range(reps):
            names = list(ways)
            names = names[rep % len(names):] + names[: rep % len(names)]
            for name in names:
                if name.startswith("ansible-playbook") and rep >= slow_reps:
                    continue
                timing = _expect(ways[name](), 0, name)
                measured[name].append({"seconds": timing.seconds, "peak_mib": timing.peak_mib})
                _say(f"  {len(fleet.lab.hosts)} hosts, {name}: {timing.seconds:.1f}s")
    finally:
        shutil.rmtree(project.parent, ignore_errors=True)
    return measured


def _expect(timing: Timing, code: int, what: str, *, needle: str = "") -> Timing:
    if timing.code != code or needle not in timing.output:
        raise SystemExit(f"benchmark: {what} exited {timing.code} (expected {code}):\n{timing.output[-3000:]}")
    return timing


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": str(os.cpu_count()),
            "memory": _memory(), "os": platform.platform(), "python": platform.python_version(),
            "ansible": f"ansible-core {version('ansible-core')}, ansible-runner {version('ansible-runner')}, "
                       f"mitogen {version('mitogen')}", "date": time.strftime("%Y-%m-%d")}


def _memory() -> str:
    total = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return f"{int(total.split()[1]) // 1024 // 1024} GiB"


def _say(message: str) -> None:
    print(f"bench: {message}", flush=True)


if __name__ == "__main__":
    main()
