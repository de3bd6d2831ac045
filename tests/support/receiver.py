"""Local HTTP servers standing in for a notification endpoint and a forge's commit-status API."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "forge-token-0123456789abcdef"


EXTERNAL = "https://controller.example.com"


# each forge's commit-status API as documented: the path, the token header, the fields, the states
API = {
    "github": (re.compile(r"/repos/ops/fleet/statuses/(?P<sha>[0-9a-f]{40})"), ("authorization", f"Bearer {TOKEN}"),
               {"state", "target_url", "description", "context"}, {"error", "failure", "pending", "success"}),
    "gitlab": (re.compile(r"/api/v4/projects/ops%2Ffleet/statuses/(?P<sha>[0-9a-f]{40})"), ("private-token", TOKEN),
               {"state", "ref", "name", "context", "target_url", "description", "coverage", "pipeline_id"},
               {"pending", "running", "success", "failed", "canceled", "skipped"}),
    "gitea": (re.compile(r"/api/v1/repos/ops/fleet/statuses/(?P<sha>[0-9a-f]{40})"),
              ("authorization", f"token {TOKEN}"),
              {"state", "target_url", "description", "context"}, {"pending", "success", "error", "failure", "warning"}),
}


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


class Forge:
    """A local stand-in for a forge's commit-status API: 201 for a status in the documented shape, 422 otherwise."""

    def __init__(self, kind: str, status: int = 201) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.refused: list[str] = []
        path, (header, value), fields, states = API[kind]
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                why = [why for wrong, why in (
                    (path.fullmatch(self.path) is None, f"no such endpoint {self.path}"),
                    (self.headers.get(header) != value, f"{header} is not the token"),
                    (self.headers.get("content-type") != "application/json", "not JSON"),
                    (not set(body) <= fields, f"unknown fields {set(body) - fields}"),
                    (body.get("state") not in states, f"state {body.get('state')!r}"),
                    (len(body.get("description", "")) > 140, "description over 140 characters")) if wrong]
                (forge.refused.extend(why) if why else forge.statuses.append(body))
                self.send_response(422 if why else status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"




def forge_targets(forges: dict[str, Forge]) -> list[dict[str, Any]]:
    return [{"format": kind, "url": forge.url, "repository": "ops/fleet", "token_file": "forge.token"}
            for kind, forge in forges.items()]
