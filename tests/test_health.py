"""Health checks (gitops.yml ``health:``): run on real lab hosts in the verify's one ssh look, recorded per host beside
the sync state, announced on transitions only, and never a way for a secret to leave the host."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ControllerError
from controller.report.metrics import Metrics
from controller.source.apps import load_apps
from controller.state.store import Store
from controller.vocabulary import ExitCode
from tests.conftest import Fleet, write_config
from tests.support.daemon import daemon, runs, wait_for, watch_config
from tests.support.metrics import promtool
from tests.support.receiver import Receiver

MAINTENANCE = "/srv/opt/shop/run/maintenance"


@pytest.mark.parametrize(("check", "problem"), [
    ({"command": "true", "tcp": 80}, "apps[0].health[0]: needs exactly one of command, http, tcp (got command, tcp)"),
    ({"retries": 1}, "apps[0].health[0]: needs exactly one of command, http, tcp (got none)"),
    ({"tcp": 70000}, "apps[0].health[0]: tcp: expected a port (1-65535) or HOST:PORT, got 70000"),
    ({"tcp": "localhost"}, "apps[0].health[0]: tcp: expected a port (1-65535) or HOST:PORT, got 'localhost'"),
    ({"tcp": True}, "apps[0].health[0].tcp: expected a whole number or a string, got true/false (True)"),
    ({"http": "127.0.0.1:8080/healthz"}, "apps[0].health[0]: http: expected an http:// or https:// URL"),
    ({"command": "true", "status": 204}, "apps[0].health[0]: status: only for an http check"),
    ({"command": "true", "timeout": "soon"}, "apps[0].health[0].timeout: expected a duration such as 30"),
    ({"command": "true", "retries": -1}, "apps[0].health[0]: retries must be 0 to 20, timeout more than 0"),
    ({"command": "true", "retries": 50}, "apps[0].health[0]: retries must be 0 to 20, timeout more than 0"),
    ({"http": "http://127.0.0.1/", "status": 302}, "status: only for an http check, an HTTP status such as 204 "
                                                   "(200-299 or 400-599)"),
    ({"command": "true", "every": 5}, "apps[0].health[0].every: unknown key"),
])
def test_a_health_check_written_wrong_is_one_line_naming_its_key(tmp_path: Path, check: dict[str, Any],
                                                                  problem: str) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts").write_text("web1\n")
    app = {"name": "web", "playbook": "site.yml", "inventory": "hosts"}
    (tmp_path / "gitops.yml").write_text(yaml.safe_dump({"apps": [{**app, "health": [check]}]}))
    with pytest.raises(ControllerError) as raised:
        load_apps(tmp_path)
    assert len(raised.value.message.splitlines()) == 1
    assert raised.value.message.startswith("gitops.yml: ") and problem in raised.value.message
    (tmp_path / "gitops.yml").write_text(yaml.safe_dump({"apps": [{**app, "health": [
        {"tcp": 8443}, {"tcp": "[::1]:8443"},
        {"http": "https://127.0.0.1/healthz", "status": 204, "delay": "0.5s"}]}]}))
    assert [str(c) for c in load_apps(tmp_path)[0].health] == ["tcp 8443", "tcp [::1]:8443",
                                                                "http https://127.0.0.1/healthz"]


class Listener:
    """Something listening on one lab host's address (they share this machine's network): a service's port."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.sock: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self.sock = socket.create_server((self.address, self.port))

    def stop(self) -> None:
        assert self.sock is not None
        self.sock.close()


@pytest.fixture
def probes(converged_app: Fleet) -> Iterator[tuple[dict[str, Listener], str]]:
    """A port listening on h1 and h2, and an HTTP health endpoint that answers 204 (on h1's address)."""
    port = free_port(converged_app.lab.host("h1").address)
    listeners = {h: Listener(converged_app.lab.host(h).address, port) for h in ("h1", "h2")}

    class NoContent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((converged_app.lab.host("h1").address, 0), NoContent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield listeners, f"http://{converged_app.lab.host('h1').address}:{server.server_address[1]}/healthz"
    finally:
        server.shutdown()
        for listener in listeners.values():
            if listener.sock is not None:
                listener.sock.close()


def free_port(address: str) -> int:
    with socket.create_server((address, 0)) as probe:
        return int(probe.getsockname()[1])


def test_health_is_checked_in_the_verify_look_reported_per_host_and_announced_on_transitions_only(
        converged_app: Fleet, probes: tuple[dict[str, Listener], str]) -> None:
    fleet = converged_app
    listeners, url = probes
    receiver = Receiver()
    write_config(fleet, notify=[{"url": receiver.url}])
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][0]["health"] = [
        {"command": f"if [ -s {MAINTENANCE} ]; then echo in maintenance: $(cat {MAINTENANCE}); exit 3; fi",
         "retries": 1, "delay": "0.2s"},
        {"tcp": listeners["h1"].port, "retries": 0, "timeout": 2},
        {"http": url, "status": 204, "retries": 0, "timeout": 2},
    ]
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    fleet.push("Health checks for staging")

    synced = fleet.controller("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    status = fleet.status_of("staging")
    assert status["health"] == "healthy"
    assert {h["host"]: h["health"] for h in status["hosts"]} == {"web1.staging": "healthy", "web2.staging": "healthy"}
    assert receiver.events("staging").count("health-degraded") == 0

    # web2's service goes into maintenance (the file holds a secret: what a failed check printed is masked) and
    # its port stops listening; nothing Ansible manages changed
    secret = fleet.secrets["staging"]
    fleet.host_file("h2", MAINTENANCE).write_text(f"{secret}\n")
    listeners["h2"].stop()
    verified = fleet.controller("verify", "--json")
    assert verified.returncode == ExitCode.UNHEALTHY, verified.stdout + verified.stderr
    app = json.loads(verified.stdout)["apps"][0]
    assert [v["verified"] for v in app["verify"]] == [True, True]  # one look each, no full check
    assert app["check"]["tasks"] == [] and app["health_degraded"] == ["web2.staging"]
    found = {h["host"]: h for h in app["health"]}
    assert found["web1.staging"]["health"] == "healthy" and found["web1.staging"]["detail"] == ""
    sick = found["web2.staging"]
    assert sick["health"] == "unhealthy"
    assert [(c["passed"], c["attempts"]) for c in sick["checks"]] == [(False, 2), (False, 1), (True, 1)]
    assert sick["detail"].startswith('command "if [ -s ') and "exit status 3: in maintenance: [redacted]" \
        in sick["detail"] and "(2 attempts)" in sick["detail"]
    assert f"tcp {listeners['h1'].port}: Connection refused" in sick["detail"]
    status_text = fleet.controller("status")
    assert status_text.returncode == 0
    assert "unhealthy" in status_text.stdout and "web2.staging unhealthy since" in status_text.stdout
    hosts = fleet.controller("status", "--hosts").stdout
    assert "web1.staging" in hosts and [line.split()[-1] for line in hosts.splitlines()
                                        if line.startswith("staging ") and "web1" in line] == ["healthy"]
    degraded = [b for b in receiver.bodies if b["event"] == "health-degraded"]
    assert len(degraded) == 1 and degraded[0]["health"]["web2.staging"]["health"] == "unhealthy"
    exposition = Metrics(lambda: Store(fleet.state / "state.db")).render()
    assert promtool(exposition) == ""
    assert 'controller_host_healthy{app="staging",host="web1.staging"} 1.0' in exposition.decode()
    assert 'controller_host_healthy{app="staging",host="web2.staging"} 0.0' in exposition.decode()

    # still unhealthy: no second announcement; then the service comes back
    again = fleet.controller("verify")
    assert again.returncode == ExitCode.UNHEALTHY
    assert receiver.events("staging").count("health-degraded") == 1
    fleet.host_file("h2", MAINTENANCE).unlink()
    listeners["h2"].start()
    recovered = fleet.controller("verify")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert receiver.events("staging").count("health-recovered") == 1
    assert fleet.status_of("staging")["health"] == "healthy"

    # the daemon's verify interval finds a service put into maintenance between rollouts, and its return
    watch_config(fleet, verify_interval=1, notify=[{"url": receiver.url}])
    with daemon(fleet) as watch:
        wait_for("the daemon's first verify", lambda: any(r["trigger"] == "verify" for r in runs(fleet)), timeout=60)
        fleet.host_file("h2", MAINTENANCE).write_text("back at noon\n")
        wait_for("health-degraded from a verify", lambda: receiver.events("staging").count("health-degraded") == 2,
                 timeout=30)
        fleet.host_file("h2", MAINTENANCE).unlink()
        wait_for("health-recovered", lambda: receiver.events("staging").count("health-recovered") == 2, timeout=30)
        assert watch.stop() == 0
    told = [b for b in receiver.bodies if b["event"] in ("health-degraded", "health-recovered")][2:]
    assert [next(r for r in runs(fleet) if r["id"] == b["run_id"])["trigger"] for b in told] == ["verify", "verify"]
    receiver.server.shutdown()

    everything = json.dumps(receiver.bodies) + verified.stdout + again.stdout + status_text.stdout + hosts
    everything += fleet.controller("history", "--json").stdout
    assert secret not in everything and "[redacted]" in everything

