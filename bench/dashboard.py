"""The dashboard at scale: a state store of 50 hosts and 5,000 runs, every page timed over real HTTP, and the
inspection commands (`status`, `history`, `show`) timed on the same store.

The store is filled through ``controller.state.Store`` (the API the pipeline records with), then a real
``controller serve`` answers; no lab host is needed. ``python -m bench.dashboard`` prints the figures;
``--before CONTROLLER`` also times another build's commands on the same store, each command of the two in
turn, for a ratio measured side by side; ``--update DIR`` puts the figures into DIR's benchmarks.*.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from controller.ansible.results import TaskResult
from controller.source.revision import Revision
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.vocabulary import HostState, Kind, Outcome, Phase, TaskStatus, Trigger

TARGET_MS = 200.0
APPS = 5
HOSTS_PER_APP = 10        # 50 hosts in all
RUNS = 5000
REQUESTS = 15             # per page
COMMAND_REPS = 15         # per inspection command (and per build, side by side)
DIFF = "--- before: /srv/opt/shop/conf/app.yml\n+++ after\n@@ -1,3 +1,3 @@\n listen: 8080\n-workers: 3\n+workers: 4\n"


def fill(path: Path, runs: int = RUNS) -> dict[str, int]:
    """A store with ``APPS`` apps of ``HOSTS_PER_APP`` hosts and ``runs`` runs: mostly quiet checks, every
    tenth a drift found on three hosts, every fiftieth a sync that converged it. Returns ids worth timing."""
    with Store(path) as store:
        # one fsync per run would make filling take minutes; what is timed is reading
        store.db.execute("PRAGMA synchronous=OFF")
        hosts = {f"app{a}": [f"web{h}.app{a}" for h in range(HOSTS_PER_APP)] for a in range(APPS)}
        drifted = 0
        for number in range(runs):
            app = f"app{number % APPS}"
            revision = Revision(f"{number // 100:040x}", f"Release {number // 100}", "Ops Team <ops@example.com>",
                                "2026-11-20T10:00:00+00:00")
            store.record_revision(revision)
            mode = Kind.SYNC if number % 50 == 0 else Kind.CHECK
            trigger = (Trigger.SCHEDULE, Trigger.WEBHOOK, Trigger.POLL, Trigger.MANUAL, Trigger.UI)[number % 5]
            run_id = store.start_run(app, revision.sha, mode, trigger)
            drift = number % 10 == 0
            changed = hosts[app][:3] if drift else []
            report = Report(
                tuple(HostReport(h, TaskStatus.CHANGED if h in changed else TaskStatus.OK, int(h in changed), 0)
                      for h in hosts[app]),
                tuple(TaskResult(h, f"template {task}", "template", TaskStatus.CHANGED, DIFF)
                      for h in changed for task in ("app.yml", "nginx.conf")))
            store.add_report(run_id, Phase.CHECK, report)
            states = {h: (HostState.DRIFTED if h in changed and mode is Kind.CHECK else HostState.IN_SYNC)
                      for h in hosts[app]}
            outcome = Outcome.CONVERGED if mode == "sync" else Outcome.DRIFTED if drift else Outcome.IN_SYNC
            # each says which it is, so that retention folds none of them: the pages are timed on 5,000 rows
            store.finish_run(run_id, outcome, None, f"{outcome.value} (run {number})", mode is Kind.SYNC, {})
            store.record_hosts(app, run_id, states, hosts[app] if mode is Kind.SYNC else [], revision.sha)
            if drift:
                drifted = run_id
    return {"drifted_run": drifted}


def measure(root: Path, runs: int = RUNS, requests: int = REQUESTS,
            before: tuple[str, Path] | None = None) -> dict[str, Any]:
    """Fill a store, start ``controller serve`` on it, time every page (milliseconds per page), then the inspection
    commands (and ``before``'s: another build's name and ``controller``, in turn with them)."""
    state = root / "state"
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ids = fill(state / "state.db", runs)
    filled = time.perf_counter() - started
    pages = ["/", "/apps/app0", f"/runs/{ids['drifted_run']}", "/history", f"/history?page={runs // 50}",
             "/history?app=app0&outcome=drifted&trigger=schedule"]
    pages += ["/api/apps", "/api/apps/app0", f"/api/runs/{ids['drifted_run']}", "/api/runs",
              f"/api/runs?page={runs // 50}", "/api/runs?app=app0&outcome=drifted", "/api/stamp", "/metrics"]
    config = serve_config(root, state)
    timings = time_pages(config, pages, requests)
    slowest = max(t["max_ms"] for t in timings.values())
    commands = {"status": ["status"], "history": ["history"], "show": ["show", str(ids["drifted_run"])]}
    builds = {"now": Path(sys.executable).parent / "controller", **({"before": before[1]} if before else {})}
    return {"hosts": APPS * HOSTS_PER_APP, "runs": runs, "requests_per_page": requests,
            "fill_seconds": round(filled, 1), "target_ms": TARGET_MS, "pages": timings,
            "slowest_median_ms": max(t["median_ms"] for t in timings.values()), "slowest_max_ms": slowest,
            "commands": {name: _time_command(builds, config, args) for name, args in commands.items()},
            "command_reps": COMMAND_REPS, "before": before[0] if before else None,
            "measured_at": time.strftime("%Y-%m-%d"), "load": round(os.getloadavg()[0], 1)}


def serve_config(root: Path, state: Path) -> Path:
    """A bastion config in ``root`` for the store in ``state`` (no repository: only its pages are read)."""
    config = root / "controller.yml"
    config.write_text(yaml.safe_dump({"source": {"url": str(root / "none.git")}, "state_dir": str(state),
                                      "workspace_dir": str(root / "workspaces")}))
    return config


def time_pages(config: Path, pages: list[str], requests: int) -> dict[str, dict[str, Any]]:
    """Start a real ``controller serve`` with ``config`` and time each of ``pages`` over HTTP, ``requests`` times
    one after another (milliseconds: median and slowest; bytes)."""
    port = _free_port()
    log = config.parent / "serve.log"
    with open(log, "w") as output:
        serve = subprocess.Popen([str(Path(sys.executable).parent / "controller"), "--config", str(config), "serve",
                                  "--listen", f"127.0.0.1:{port}"], stderr=output)
    try:
        _wait_for(port, serve, log)
        return {page: _time(port, page, requests) for page in pages}
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)


def _time_command(builds: dict[str, Path], config: Path, args: list[str]) -> dict[str, float]:
    """Median wall milliseconds of ``controller ARGS`` per build, the builds run in turn (one's noise is the
    other's); each answer checked."""
    times: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(COMMAND_REPS):
        for name, controller in builds.items():
            begin = time.perf_counter()
            done = subprocess.run([str(controller), "--config", str(config), *args], capture_output=True)
            times[name].append((time.perf_counter() - begin) * 1000)
            if done.returncode != 0:
                raise SystemExit(f"benchmark: {controller} {' '.join(args)} exited {done.returncode}: "
                                 f"{done.stderr[-300:]!r}")
    return {f"{name}_ms": round(median(spent), 1) for name, spent in times.items()}


def _time(port: int, page: str, requests: int) -> dict[str, Any]:
    times, size = [], 0
    for _ in range(requests):
        begin = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", page)
        response = connection.getresponse()
        body = response.read()
        times.append((time.perf_counter() - begin) * 1000)
        connection.close()
        if response.status != 200:
            raise SystemExit(f"benchmark: GET {page} answered {response.status}: {body[:300]!r}")
        size = len(body)
    return {"median_ms": round(median(times), 1), "max_ms": round(max(times), 1), "bytes": size}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(port: int, serve: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit(f"benchmark: controller serve exited {serve.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("benchmark: controller serve did not start listening within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--before", type=Path, metavar="CONTROLLER",
                        help="another build's controller to time the commands beside")
    parser.add_argument("--before-name", default="the build given with --before", metavar="TEXT",
                        help="what to call it in the report (e.g. its commit)")
    parser.add_argument("--update", type=Path, metavar="DIR",
                        help="put the figures into DIR/benchmarks.json and write DIR's benchmarks.md again")
    args = parser.parse_args()
    os.umask(0o077)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        results = measure(Path(tmp), before=(args.before_name, args.before) if args.before else None)
    print(json.dumps(results, indent=2))
    if args.update:
        from bench import report
        report.update(args.update, "dashboard", results)
    met = results["slowest_max_ms"] < TARGET_MS
    print(f"every page under {TARGET_MS:.0f} ms: {'yes' if met else 'NO'} "
          f"(slowest median {results['slowest_median_ms']} ms, slowest single request {results['slowest_max_ms']} ms)")


if __name__ == "__main__":
    main()
