"""The watch daemon's HTTP listener: push webhooks, /healthz and /metrics."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from controller.errors import ControllerError
from controller.outcomes import Reason
from controller.webhooks import PROVIDERS, Deliveries, Rejected, verify

log = logging.getLogger("controller")

READ_TIMEOUT = 10.0  # seconds a client may take to send its request


@dataclass(frozen=True)
class Routes:
    """What the listener serves; the daemon supplies the callbacks."""

    branch: str
    secret: bytes | None
    max_body: int
    on_push: Callable[[str], None]
    health: Callable[[], tuple[int, dict[str, Any]]]
    metrics: Callable[[], bytes]


class Listener:
    """A threaded HTTP server on ``HOST:PORT`` (port 0 picks a free one)."""

    def __init__(self, address: str, routes: Routes) -> None:
        host, _, port = address.rpartition(":")
        deliveries = Deliveries()

        class Handler(_Handler):
            pass

        Handler.routes, Handler.deliveries = routes, deliveries
        try:
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        except OSError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"cannot listen on {address}: {exc.strerror}") from exc
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="listener", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    routes: Routes
    deliveries: Deliveries
    server_version = "gitops-controller"
    timeout = READ_TIMEOUT

    def do_GET(self) -> None:
        if self.path == "/healthz":
            status, body = self.routes.health()
            self._send(status, body)
        elif self.path == "/metrics":
            self._send_bytes(200, self.routes.metrics(), CONTENT_TYPE_LATEST)
        else:
            self._send(404, {"error": "not found (GET /healthz, /metrics; POST /hooks/github|gitlab|generic)"})

    def do_POST(self) -> None:
        provider = self.path.removeprefix("/hooks/")
        if not self.path.startswith("/hooks/") or provider not in PROVIDERS:
            self._send(404, {"error": f"no such hook (POST /hooks/{'|'.join(PROVIDERS)})"})
            return
        try:
            self._send(*self._hook(provider))
        except Rejected as rejected:
            log.warning("webhook %s from %s refused (%d): %s", provider, self.client_address[0],
                        rejected.status, rejected.message)
            self._send(rejected.status, {"error": rejected.message})

    def _hook(self, provider: str) -> tuple[int, dict[str, Any]]:
        routes = self.routes
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise Rejected(411, "Content-Length required")
        if int(length) > routes.max_body:
            self._drain(int(length))
            raise Rejected(413, f"body of {length} bytes is over the limit of {routes.max_body}")
        body = self.rfile.read(int(length))
        if routes.secret is None:
            raise Rejected(403, "webhooks are off: set watch.webhook_secret_file")
        push = verify(provider, {k.lower(): v for k, v in self.headers.items()}, body, routes.secret)
        if push is None:
            return 200, {"ignored": "not a push event"}
        if push.branch != routes.branch:
            return 200, {"ignored": f"push to {push.branch!r}, watching {routes.branch!r}"}
        if not self.deliveries.first_time(push.delivery):
            return 200, {"ignored": f"delivery {push.delivery} already received"}
        log.info("webhook %s: push to %s (%s)", provider, push.branch, (push.sha or "?")[:12])
        routes.on_push(provider)
        return 202, {"accepted": True, "branch": push.branch, "revision": push.sha}

    def _drain(self, length: int) -> None:
        # read (a bounded amount of) what the client is still sending, so it gets to see our 413
        remaining = min(length, 8 * self.routes.max_body)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
        self.close_connection = True

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self._send_bytes(status, (json.dumps(body) + "\n").encode(), "application/json")

    def _send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)
