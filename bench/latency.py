"""Latencies of `controller watch`: webhook to run start and push to converged over real HTTP; a hand edit
on one host to detected and to corrected, with the watch verifying on an interval."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Any

import yaml

from bench.fleet import BenchFleet
from bench.ways import BIN, base_env
from controller.web.webhooks import sign

SECRET = b"bench-webhook-secret"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        return dict(json.loads(response.read()))


def _until(what: str, predicate: Any, timeout: float = 600, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: timed out waiting for {what}")
        time.sleep(every)


class _Watching:
    """A real `controller watch` on the fleet with the given watch settings and a listener for /healthz."""

    def __init__(self, fleet: BenchFleet, **watch: Any) -> None:
        port = _free_port()
        self.config = fleet.root / "controller-watch.yml"
        config = yaml.safe_load(fleet.config.read_text())
        config["watch"] = {"listen": f"127.0.0.1:{port}", "poll_interval": 0, "drift_check_interval": 0,
                           "watch_local": False, **watch}
        self.config.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = fleet.root / "watch.log"

    def __enter__(self) -> _Watching:
        self.log = open(self.log_path, "w")  # open for the daemon's whole life
        env = {**base_env(), "CONTROLLER_CONFIG": str(self.config)}
        self.daemon = subprocess.Popen([str(BIN / "controller"), "watch"], env=env, stdout=self.log,
                                       stderr=subprocess.STDOUT)
        _until("the listener", lambda: _answers(self.url), timeout=60)
        _until("the first cycle", lambda: self.health()["cycles"] >= 1 and self.health()["running"] is None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=120)
        self.log.close()

    def health(self) -> dict[str, Any]:
        return _health(self.url)


def verify_latency(fleet: BenchFleet, reps: int, interval: float) -> dict[str, list[float]]:
    """Edit a managed file on one host at a random moment; time until the watch's verify names the host,
    and until the file is back as Git says."""
    detected, corrected = [], []
    with _Watching(fleet, verify_interval=interval, drift_check_interval=3600) as watching:
        _until("a first verify", lambda: "verified against their manifests" in watching.log_path.read_text())
        for _ in range(reps):
            time.sleep(random.uniform(0, interval))  # edits land anywhere in the verify interval
            host = random.choice(fleet.lab.hosts)
            target = host.path("/srv/bench/t1.conf")
            seen = watching.log_path.read_text().count("needs a full check")
            good = target.read_text()
            target.write_text(good + "hand edit\n")
            edited = time.perf_counter()
            _until("the edit detected", lambda seen=seen: watching.log_path.read_text().count(
                "needs a full check") > seen, every=0.02)
            detected.append(time.perf_counter() - edited)
            _until("the edit corrected", lambda target=target, good=good: target.read_text() == good, every=0.02)
            corrected.append(time.perf_counter() - edited)
            _until("the cycle to finish", lambda: watching.health()["running"] is None)
    return {"detected": detected, "corrected": corrected, "interval": [interval]}


def watch_latency(fleet: BenchFleet, reps: int) -> dict[str, list[float]]:
    """Push a one-line change, send a signed GitHub webhook, time the run's start and convergence."""
    secret_file = fleet.root / "webhook.secret"
    secret_file.write_bytes(SECRET)
    starts, converged = [], []
    with _Watching(fleet, webhook_secret_file=str(secret_file)) as watching:
        url = watching.url
        targets = [h.path("/srv/bench/t1.conf") for h in fleet.lab.hosts]
        for rep in range(reps):
            value = f"watch-{rep}-{time.time_ns()}"
            sha = fleet.set_defaults(value)
            body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
            before = _health(url)["cycles"]
            request = urllib.request.Request(url + "/hooks/github", body, {
                "X-GitHub-Event": "push", "X-GitHub-Delivery": sha, "X-Hub-Signature-256": sign(body, SECRET),
                "Content-Type": "application/json"})
            sent = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202
            _until("the run to start", lambda before=before: _health(url)["cycles"] > before)
            starts.append(time.perf_counter() - sent)
            _until("every host converged", lambda value=value: all(value in t.read_text() for t in targets),
                   every=0.05)
            converged.append(time.perf_counter() - sent)
            _until("the cycle to finish", lambda: _health(url)["running"] is None)
    return {"webhook_to_start": starts, "push_to_converged": converged}


def _answers(url: str) -> bool:
    try:
        _health(url)
    except OSError:
        return False
    return True


