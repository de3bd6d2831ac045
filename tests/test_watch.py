"""`controller watch` end to end: real webhooks over HTTP, a bare remote, lab hosts, SIGTERM."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from controller.webhooks import sign
from tests.conftest import APP_YML, BIN, VERSION, Fleet, build_fleet, bump_version, write_config
from tests.test_interrupt import workspaces

SECRET = b"webhook-test-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """A real `controller watch` process with its log in a file."""

    def __init__(self, fleet: Fleet, port: int | None) -> None:
        self.fleet = fleet
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.log_path = fleet.root / "watch.log"
        env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(BIN / "controller"), "watch"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body if method == "POST" else None,
                                     headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def hook(self, provider: str, event: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, body = self.request("POST", f"/hooks/{provider}", json.dumps(event).encode(),
                                    {"Content-Type": "application/json", **headers})
        return status, json.loads(body)

    def settled(self) -> bool:
        """No cycle running, as /healthz says."""
        status, body = self.request("GET", "/healthz")
        return status == 200 and json.loads(body)["running"] is None


@contextmanager
def daemon(fleet: Fleet, port: int | None = None) -> Iterator[Daemon]:
    running = Daemon(fleet, port)
    try:
        if port:
            wait_for("the listener", lambda: _answers(running))
        yield running
    except BaseException:
        print(running.log())  # shown by pytest when the test fails
        raise
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def _answers(running: Daemon) -> bool:
    assert running.proc.poll() is None, running.log()
    try:
        return running.request("GET", "/healthz")[0] == 200
    except OSError:
        return False


def watch_config(fleet: Fleet, **watch: Any) -> None:
    settings = {"poll_interval": 0, "drift_check_interval": 0, "watch_local": False, "debounce": 0.2, **watch}
    notify = settings.pop("notify", [])
    write_config(fleet, watch=settings, notify=notify)


def runs(fleet: Fleet, app: str = "staging") -> list[dict[str, Any]]:
    return [r for r in fleet.runs() if r["app"] == app]


def version_is(fleet: Fleet, version: str, hosts: tuple[str, ...] = ("h1", "h2")) -> Callable[[], bool]:
    def check() -> bool:
        files = [fleet.host_file(h, VERSION) for h in hosts]
        return all(f.exists() and f.read_text() == f"{version}\n" for f in files)
    return check


def github_push(sha: str, branch: str = "main") -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha, "repository": {"name": "fleet"}}


def test_signed_webhook_applies_the_push_and_forgeries_trigger_nothing(fleet: Fleet) -> None:
    fleet.root.joinpath("webhook.secret").write_bytes(SECRET + b"\n")
    port = free_port()
    watch_config(fleet, listen=f"127.0.0.1:{port}", webhook_secret_file="webhook.secret", max_body_bytes=4096)
    with daemon(fleet, port) as watch:
        wait_for("the first sync", version_is(fleet, "1.0.0"))
        wait_for("the first cycle to finish", watch.settled)
        sha = bump_version(fleet, "2.0.0")
        body = json.dumps(github_push(sha)).encode()

        forged = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d1", "X-Hub-Signature-256": sign(body, b"guess")}
        assert watch.hook("github", github_push(sha), forged) == (
            401, {"error": "X-Hub-Signature-256 does not match the body (wrong secret?)"})
        assert watch.hook("github", github_push(sha), {"X-GitHub-Event": "push"})[0] == 401
        assert watch.hook("generic", github_push(sha), {})[0] == 401
        assert watch.hook("gitlab", github_push(sha), {"X-Gitlab-Event": "Push Hook",
                                                       "X-Gitlab-Token": "wrong"})[0] == 401
        huge = json.dumps({**github_push(sha), "padding": "x" * 10000}).encode()
        status, _ = watch.request("POST", "/hooks/github", huge, {"X-Hub-Signature-256": sign(huge, SECRET)})
        assert status == 413
        other = json.dumps(github_push(sha, branch="feature")).encode()
        status, answer = watch.request("POST", "/hooks/github", other, {"X-Hub-Signature-256": sign(other, SECRET)})
        assert status == 200 and "ignored" in json.loads(answer)
        time.sleep(1.5)  # longer than the debounce: anything triggered would have started
        assert len(runs(fleet)) == 1
        assert version_is(fleet, "1.0.0")()

        signed = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d2", "X-Hub-Signature-256": sign(body, SECRET)}
        status, answer = watch.request("POST", "/hooks/github", body, signed)
        assert (status, json.loads(answer)["revision"]) == (202, sha)
        wait_for("the pushed commit on the hosts", version_is(fleet, "2.0.0"))
        wait_for("the cycle to finish", watch.settled)
        latest = runs(fleet)[0]
        assert (latest["trigger"], latest["revision"], latest["outcome"]) == ("webhook", sha, "converged")

        status, answer = watch.request("POST", "/hooks/github", body, signed)  # redelivery
        assert status == 200 and "already received" in json.loads(answer)["ignored"]
        # GitLab and generic senders are accepted too; the branch has not moved, so nothing runs
        gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode(), "X-Gitlab-Event-UUID": "g1"}
        assert watch.hook("gitlab", {"ref": "refs/heads/main", "checkout_sha": sha}, gitlab)[0] == 202
        generic = json.dumps({"branch": "main", "revision": sha}).encode()
        status, _ = watch.request("POST", "/hooks/generic", generic, {"X-Signature-256": sign(generic, SECRET)})
        assert status == 202
        time.sleep(1)
        wait_for("the cycle to finish", watch.settled)
        assert "nothing to do: main is still at" in watch.log()

        status, health = watch.request("GET", "/healthz")
        assert status == 200
        assert json.loads(health)["last_success_age_seconds"] < 60
        status, metrics = watch.request("GET", "/metrics")
        text = metrics.decode()
        assert status == 200
        assert 'controller_runs_total{app="staging",mode="sync",outcome="converged"} 2.0' in text
        assert f'controller_applied_revision_info{{app="staging",revision="{sha}"}} 1.0' in text
        assert 'controller_run_duration_seconds_count{app="staging",mode="sync"} 2.0' in text
        # the version file differed on both before the apply; drift is what is left afterwards: none
        assert 'controller_drifted_hosts{app="staging"} 0.0' in text
        assert 'controller_host_drifted{app="staging",host="web1.staging"} 0.0' in text
        assert 'controller_hosts_behind{app="staging"} 0.0' in text
        assert watch.stop() == 0
    assert len(runs(fleet)) == 2
    assert "refused (401)" in watch.log() and SECRET.decode() not in watch.log()


def test_local_push_burst_and_suspend(fleet: Fleet) -> None:
    watch_config(fleet, watch_local=True, debounce=0.5)
    with daemon(fleet) as watch:
        wait_for("the first sync", version_is(fleet, "1.0.0"))
        sha = bump_version(fleet, "2.0.0")  # no webhook, no poll: only the bare repository's refs moved
        wait_for("the push on the hosts", version_is(fleet, "2.0.0"))
        wait_for("the run to be recorded", lambda: runs(fleet)[0]["revision"] == sha and
                 runs(fleet)[0]["outcome"] is not None)
        assert runs(fleet)[0]["trigger"] == "push"

        before = len(runs(fleet))
        for number in range(20):
            last = bump_version(fleet, f"3.0.{number}")
        wait_for("the burst's last commit on the hosts", version_is(fleet, "3.0.19"))
        wait_for("the last run to finish", lambda: runs(fleet)[0]["outcome"] is not None)
        time.sleep(2)  # a third run would have started by now
        burst = runs(fleet)[: len(runs(fleet)) - before]
        assert 1 <= len(burst) <= 2
        assert burst[0]["revision"] == last and burst[0]["outcome"] == "converged"

        suspended = fleet.controller("suspend", "staging", "--reason", "maintenance")
        assert suspended.returncode == 0, suspended.stderr
        count = len(runs(fleet))
        held = bump_version(fleet, "4.0.0")
        wait_for("the daemon to see the push", lambda: watch.log().count("suspended since") >= 1)
        assert len(runs(fleet)) == count and version_is(fleet, "3.0.19")()
        assert watch.stop() == 0

    manual = fleet.controller("sync")
    assert manual.returncode == 0
    assert "app staging is suspended since" in manual.stderr and "maintenance" in manual.stderr
    assert version_is(fleet, "3.0.19")()
    status = json.loads(fleet.controller("status", "--json").stdout)
    assert status[0]["suspended"] is True
    assert fleet.controller("resume", "staging").returncode == 0
    assert fleet.controller("resume", "staging").returncode == 1  # not suspended any more
    assert fleet.controller("suspend", "stagin").returncode == 1  # a typo is not silently accepted
    assert fleet.controller("sync").returncode == 0
    assert version_is(fleet, "4.0.0")()
    assert runs(fleet)[0]["revision"] == held


class Receiver:
    """A real HTTP endpoint standing in for a notification webhook (JSON or Slack)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def events(self, app: str) -> list[str]:
        return [b["event"] for b in self.bodies if b["app"] == app]


def test_scheduled_drift_check_corrects_apply_and_reports_detect_once(tmp_path: Path, lab: Any,
                                                                      age_key: Any) -> None:
    fleet = build_fleet(tmp_path / "fleet", lab, age_key, apps=("staging", "production"))
    assert fleet.controller("sync").returncode == 0  # both apps applied once under policy apply
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    for app in gitops["apps"]:
        if app["name"] == "production":
            app["policy"] = "detect"
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    fleet.push("production: detect only")
    generic, slack = Receiver(), Receiver()
    slack_url = fleet.root / "slack.url"
    slack_url.write_text(slack.url + "\n")
    watch_config(fleet, drift_check_interval=3, notify=[{"url": generic.url},
                                                        {"format": "slack", "url_file": str(slack_url)}])
    try:
        with daemon(fleet) as watch:
            wait_for("the first cycle", lambda: len(fleet.runs()) >= 4)
            staging = fleet.host_file("h1", APP_YML)
            production = fleet.host_file("h3", APP_YML)
            staging.write_text(staging.read_text().replace("workers: 2", "workers: 64"))
            production.write_text(production.read_text().replace("workers: 8", "workers: 99"))
            wait_for("staging corrected", lambda: "workers: 64" not in staging.read_text())
            wait_for("two scheduled checks of production that found the drift", lambda: len(
                [r for r in runs(fleet, "production") if r["trigger"] == "schedule"
                 and r["outcome"] == "drifted"]) >= 2)
            assert "workers: 99" in production.read_text()  # detect: reported, not changed
            assert watch.stop() == 0
    finally:
        generic.server.shutdown()
        slack.server.shutdown()
    corrected = [r for r in runs(fleet) if r["summary"].get("corrected") == ["web1.staging"]]
    assert corrected and corrected[0]["trigger"] == "schedule"
    assert generic.events("production").count("drift-found") == 1  # announced once, not every cycle
    assert "drift-corrected" in generic.events("staging")
    [found] = [b for b in generic.bodies if b["event"] == "drift-found"]
    assert found["hosts"]["changed"] == ["web1.prod"] and found["revision"]
    assert any(":warning: *production*: drift found" in b["text"] for b in slack.bodies)
    everything = json.dumps(generic.bodies + slack.bodies)
    assert all(value not in everything for value in fleet.secrets.values())


def test_failing_cycle_is_retried_then_recovers_and_sigterm_mid_run_exits_cleanly(fleet: Fleet) -> None:
    receiver = Receiver()
    port = free_port()
    watch_config(fleet, watch_local=True, listen=f"127.0.0.1:{port}", backoff=1, backoff_max=2,
                 notify=[{"url": receiver.url, "events": ["run-failed", "recovered"]}])
    try:
        with daemon(fleet, port) as watch:
            wait_for("the first sync", version_is(fleet, "1.0.0"))
            playbook = fleet.work / "playbooks/site.yml"
            good = playbook.read_text()
            playbook.write_text(good + "\n  - this is: [not, a play\n")
            bump_version(fleet, "2.0.0")
            wait_for("the failure to be retried", lambda: len(
                [r for r in runs(fleet) if r["reason"] == "SyntaxCheckFailed"]) >= 3)
            status, health = watch.request("GET", "/healthz")
            assert status == 200 and "syntax" in json.loads(health)["last_failure"]
            assert version_is(fleet, "1.0.0")()  # the last good revision stays applied
            assert watch.proc.poll() is None

            playbook.write_text(good)
            fixed = bump_version(fleet, "3.0.0")
            wait_for("the fix on the hosts", version_is(fleet, "3.0.0"))
            wait_for("the recovery to be recorded", lambda: runs(fleet)[0]["revision"] == fixed
                     and runs(fleet)[0]["outcome"] == "converged")
            wait_for("the recovery notice", lambda: receiver.events("staging")[-1:] == ["recovered"])
            assert receiver.events("staging") == ["run-failed", "recovered"]

            bump_version(fleet, "4.0.0")
            wait_for("a playbook to be running", lambda: any(
                (p / "runner").is_dir() and any((p / "runner").iterdir()) for p in workspaces(watch.proc.pid)))
            started = time.monotonic()
            assert watch.stop() == 0
            assert time.monotonic() - started < 30
            assert workspaces(watch.proc.pid) == set()
    finally:
        receiver.server.shutdown()
    with open(fleet.state / "controller.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: this would raise if still held
    assert runs(fleet)[0]["reason"] == "Interrupted"
    assert "run-failed" not in receiver.events("staging")[2:]  # a stop is not announced as a failure


def test_an_unreadable_or_empty_webhook_secret_is_one_line(fleet: Fleet) -> None:
    watch_config(fleet, listen=f"127.0.0.1:{free_port()}", webhook_secret_file="missing.secret")
    missing = fleet.controller("watch", timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("missing.secret: No such file or directory")
    (fleet.root / "empty.secret").write_text("\n")
    watch_config(fleet, listen=f"127.0.0.1:{free_port()}", webhook_secret_file="empty.secret")
    empty = fleet.controller("watch", timeout=60)
    assert empty.returncode == 1 and empty.stderr.strip().endswith("empty.secret is empty")
