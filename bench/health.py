"""`python -m bench.health`: what a rollout's health gate costs, at 10 and 50 lab hosts.

After each batch a rollout runs the app's health checks on the batch's hosts: one ssh round trip per host, all
hosts at once (``controller.verify.verdict.check_health``), the same look ``verify`` takes. This times that
round trip for a canary batch of 1 and a batch of every host, and the look ``verify`` takes with and without
checks, interleaved so that noise hits them alike, in one process (wall time, and the CPU of the ssh clients
and reapers it starts). ``--update DIR`` puts the figures into DIR's benchmarks.*.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.fleet import BenchFleet
from bench.ways import converged, interleaved, sizes_command
from controller.config import load_config
from controller.schema import Seconds
from controller.source.apps import HealthCheck
from controller.state.store import Store
from controller.verify.verdict import check_health, verify_hosts
from controller.vocabulary import Health
from lab import REAL, Lab
from lab.repository import make_age_key

PREFIX = "127.0.5"  # the bench's addresses, apart from the tests'
APP = "fleet"


class Healthz(BaseHTTPRequestHandler):
    """The service the http check asks: 200 at once."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def ways(fleet: BenchFleet, port: int) -> dict[str, Callable[[], None]]:
    """Each look to time, by name: the verify look alone, with checks that keep X25519, with a command check
    (OpenSSH's default key exchange, docs/benchmarks.md says why), and the gate of a rollout batch."""
    config = load_config(fleet.config)
    with Store.of(config) as store:
        manifests = store.manifests(APP)
    digest = next(m.digest for m in manifests.values() if m is not None)
    connections = {host: m.connection for host, m in manifests.items() if m is not None}
    canary = dict(sorted(connections.items())[:1])
    sshd = next(iter(connections.values())).port or 22  # something every lab host listens on
    network = (HealthCheck(tcp=sshd, retries=0), HealthCheck(http=f"http://127.0.0.1:{port}/healthz", retries=0))
    gate = (HealthCheck(command="test -d /srv/bench", retries=0, timeout=Seconds(5)), *network)
    work = fleet.work

    def verified(checks: tuple[HealthCheck, ...]) -> None:
        verdicts = verify_hosts(config, manifests, {}, digest, work, checks)
        assert all(v.verified for v in verdicts) and len(verdicts) == len(connections), verdicts

    def healthy(batch: dict[str, Any]) -> None:
        found = check_health(config, gate, batch, work)
        assert len(found) == len(batch) and all(h.health is Health.HEALTHY for h in found.values()), found

    return {
        "verify look, no checks": lambda: verified(()),
        "verify look + tcp and http checks": lambda: verified(network),
        "verify look + command, tcp and http checks": lambda: verified(gate),
        "health gate of a canary batch (1 host)": lambda: healthy(canary),
        "health gate of a batch of every host": lambda: healthy(connections),
    }


def measure(root: Path, sizes: list[int], reps: int) -> dict[str, Any]:
    """Each way at each size, ``reps`` times in rotating order: wall and client CPU seconds."""
    started, load = time.time(), round(os.getloadavg()[0], 1)
    key = make_age_key(root / "age")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results: dict[str, Any] = {"reps": reps, "load": load, "measured_at": time.strftime("%Y-%m-%d"), "sizes": {}}
    try:
        for hosts in sizes:
            with Lab(root / f"lab{hosts}", hosts, prefix=PREFIX, costs=REAL) as lab:
                fleet = BenchFleet(root / f"fleet{hosts}", lab, key)
                fleet.build()
                converged(fleet, "health")
                timed = ways(fleet, server.server_address[1])
                results["sizes"][str(hosts)] = interleaved(
                    {name: functools.partial(_time, way) for name, way in timed.items()}, reps)
                print(json.dumps(results["sizes"][str(hosts)], indent=1), flush=True)
    finally:
        server.shutdown()
    results["duration_minutes"] = round((time.time() - started) / 60, 1)
    return results


def _time(way: Callable[[], None]) -> dict[str, float]:
    before, wall = os.times(), time.monotonic()
    way()
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"seconds": time.monotonic() - wall, "cpu": cpu}


if __name__ == "__main__":
    sizes_command("health", __doc__, measure, reps=9)
