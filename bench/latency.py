"""Webhook-to-run-start and push-to-converged latency of `controller watch`, over real HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Any

import yaml

from bench.fleet import BenchFleet
from bench.ways import BIN, base_env
from controller.webhooks import sign

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


def watch_latency(fleet: BenchFleet, reps: int) -> dict[str, list[float]]:
    """Push a one-line change, send a signed GitHub webhook, time the run's start and convergence."""
    port = _free_port()
    secret_file = fleet.root / "webhook.secret"
    secret_file.write_bytes(SECRET)
    config = yaml.safe_load(fleet.config.read_text())
    config["watch"] = {"listen": f"127.0.0.1:{port}", "webhook_secret_file": str(secret_file),
                       "poll_interval": 0, "drift_check_interval": 0, "watch_local": False}
    fleet.config.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    log = open(fleet.root / "watch.log", "w")  # noqa: SIM115 - open for the daemon's whole life
    env = {**base_env(), "CONTROLLER_CONFIG": str(fleet.config)}
    daemon = subprocess.Popen([str(BIN / "controller"), "watch"], env=env, stdout=log, stderr=subprocess.STDOUT)
    starts, converged = [], []
    try:
        _until("the listener", lambda: _answers(url), timeout=60)
        _until("the first cycle", lambda: _health(url)["cycles"] >= 1 and _health(url)["running"] is None)
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
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        log.close()
    return {"webhook_to_start": starts, "push_to_converged": converged}


def _answers(url: str) -> bool:
    try:
        _health(url)
    except OSError:
        return False
    return True


