"""A real `controller watch` under test, its config, and waiting on what it does."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import BIN, VERSION, Fleet, write_config


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


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


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

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                redirect: bool = True) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body if method == "POST" else None,
                                     headers=headers or {}, method=method)
        opener = urllib.request.build_opener(*(() if redirect else (NoRedirect,)))
        try:
            with opener.open(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def hook(self, provider: str, event: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, body = self.request("POST", f"/hooks/{provider}", json.dumps(event).encode(),
                                    {"Content-Type": "application/json", **headers})
        return status, json.loads(body)

    def health(self) -> dict[str, Any]:
        status, body = self.request("GET", "/healthz")
        assert status == 200, body
        return dict(json.loads(body))

    def settled(self) -> bool:
        """No cycle running, as /healthz says."""
        return self.health()["running"] is None

    def cycled(self) -> bool:
        """Its first cycle has run (on a fleet already at the head, one that may change nothing) and none runs."""
        health = self.health()
        return health["cycles"] >= 1 and health["running"] is None

    def metrics(self) -> str:
        status, body = self.request("GET", "/metrics")
        assert status == 200, body
        return body.decode()

    def act(self, path: str, form: dict[str, str]) -> int:
        """A dashboard action as a browser sends it: the form with the CSRF token its page carries, and the cookie."""
        page = urllib.request.urlopen(self.url + path.rpartition("/")[0], timeout=10)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.read().decode())
        assert csrf is not None
        body = urllib.parse.urlencode({**form, "csrf": csrf.group(1)}).encode()
        return self.request("POST", path, body, {"Cookie": f"controller_csrf={csrf.group(1)}"}, redirect=False)[0]


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
    notify, ui = settings.pop("notify", []), settings.pop("ui", {})
    write_config(fleet, watch=settings, notify=notify, ui=ui)


def runs(fleet: Fleet, app: str = "staging") -> list[dict[str, Any]]:
    return [r for r in fleet.runs() if r["app"] == app]


def version_is(fleet: Fleet, version: str, hosts: tuple[str, ...] = ("h1", "h2")) -> Callable[[], bool]:
    def check() -> bool:
        files = [fleet.host_file(h, VERSION) for h in hosts]
        return all(f.exists() and f.read_text() == f"{version}\n" for f in files)
    return check


def github_push(sha: str, branch: str = "main") -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": sha, "repository": {"name": "fleet"}}
