"""Notifications and commit statuses, in process: a real state store, real HTTP receivers on 127.0.0.1.

GitHub, GitLab and Gitea cannot run here, so ``Forge`` is a local HTTP server that takes a commit status only in
the shape each one's API documents (path, token header, fields, states) and refuses anything else. That statuses
and notifications follow real runs is tests/test_watch.py's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.ansible.results import TaskResult
from controller.config import Config, load_config
from controller.report.drift import HostReport, Report
from controller.report.forges import post_statuses
from controller.report.notify import announce
from controller.run.results import AppResult, Request, Result
from controller.source.revision import Revision
from controller.state.store import Store
from controller.vocabulary import Kind, Mode, Outcome, Policy, Reason, TaskStatus

TOKEN = "forge-token-0123456789abcdef"
EXTERNAL = "https://controller.example.com"
SHA = "4e8d883a12f4c0ffee0ddba11c0ffee0ddba11c0"
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


@pytest.fixture
def forges() -> Iterator[dict[str, Forge]]:
    running = {kind: Forge(kind) for kind in API}
    yield running
    for forge in running.values():
        forge.server.shutdown()


def configured(tmp_path: Path, notify: list[dict[str, Any]]) -> Config:
    (tmp_path / "forge.token").write_text(TOKEN + "\n")
    path = tmp_path / "controller.yml"
    path.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git")}, "state_dir": "state",
                                    "ui": {"external_url": EXTERNAL + "/"}, "notify": notify}))
    return load_config(path)


def forge_targets(forges: dict[str, Forge]) -> list[dict[str, Any]]:
    return [{"format": kind, "url": forge.url, "repository": "ops/fleet", "token_file": "forge.token"}
            for kind, forge in forges.items()]


def recorded(store: Store, kind: Kind, outcome: Outcome, message: str, report: Report | None = None,
             reason: Reason | None = None, revision: str = SHA) -> Result:
    """A run of staging recorded in ``store`` as the pipeline records it, and its result."""
    run_id = store.start_run("staging", revision, kind, "manual", "apply")
    store.finish_run(run_id, outcome, reason, message, kind is Kind.SYNC, {})
    app = AppResult("staging", Policy.APPLY, run_id, outcome, reason, message, report, None, None, revision, kind=kind)
    mode = Mode.CHECK if kind is Kind.PREVIEW else Mode(kind.value)
    request = Request(mode, revision=revision if kind is Kind.PREVIEW
                      else None)
    return Result(request, Revision(revision, "Release <!channel> <http://evil.example|click> & co", "Ops", "now"),
                  (app,), kind=kind)


IN_SYNC = Report((HostReport("web1", TaskStatus.OK, 0, 0),), ())
DRIFT = Report((HostReport("web1", TaskStatus.CHANGED, 1, 0), HostReport("web2", TaskStatus.OK, 0, 0)),
               (TaskResult("web1", "template app.yml", "template", TaskStatus.CHANGED, "-a\n+b\n"),))


def test_slack_escapes_what_it_quotes_and_both_bodies_link_to_the_run(tmp_path: Path) -> None:
    generic, slack = Receiver(), Receiver()
    config = configured(tmp_path, [{"url": generic.url}, {"format": "slack", "url": slack.url}])
    try:
        with Store.of(config) as store:
            result = recorded(store, Kind.CHECK, Outcome.DRIFTED, "drifted: web1 <!here> <https://x.example|y>",
                              DRIFT)
            announce(config, store, result)
    finally:
        generic.server.shutdown()
        slack.server.shutdown()
    run_id = result.apps[0].run_id
    [text] = [body["text"] for body in slack.bodies]
    assert text == (f":warning: *staging*: drift found at `{SHA[:12]}` (Release &lt;!channel&gt; "
                    f"&lt;http://evil.example|click&gt; &amp; co): drifted: web1 &lt;!here&gt; "
                    f"&lt;https://x.example|y&gt; <{EXTERNAL}/runs/{run_id}|run #{run_id}>")
    [body] = generic.bodies
    assert body["url"] == f"{EXTERNAL}/runs/{run_id}" and body["subject"].startswith("Release <!channel>")


def test_recovered_is_announced_when_a_failure_is_followed_by_drift_or_by_sync(tmp_path: Path) -> None:
    receiver = Receiver()
    config = configured(tmp_path, [{"url": receiver.url}])
    try:
        with Store.of(config) as store:
            for outcome, report, reason in ((Outcome.FAILED, None, Reason.SYNTAX_CHECK_FAILED),
                                            (Outcome.DRIFTED, DRIFT, None),
                                            (Outcome.DRIFTED, DRIFT, None),  # the same drift: nothing new
                                            (Outcome.FAILED, None, Reason.FETCH_FAILED),
                                            (Outcome.IN_SYNC, IN_SYNC, None)):
                announce(config, store, recorded(store, Kind.CHECK, outcome, outcome.value, report, reason))
    finally:
        receiver.server.shutdown()
    assert receiver.events("staging") == ["run-failed", "recovered", "drift-found", "run-failed", "recovered"]


def test_commit_statuses_reach_each_forge_in_its_documented_shape(tmp_path: Path, forges: dict[str, Forge]) -> None:
    config = configured(tmp_path, forge_targets(forges))
    with Store.of(config) as store:
        first = recorded(store, Kind.SYNC, Outcome.CONVERGED, "corrected: web1")
        post_statuses(config, store, first)
        post_statuses(config, store, recorded(store, Kind.SYNC, Outcome.IN_SYNC, "2 host(s) in sync"))  # told
        drifted = recorded(store, Kind.CHECK, Outcome.DRIFTED, "drifted: web1; not applied (check only)", DRIFT)
        post_statuses(config, store, drifted)
        for kind in (Kind.PREVIEW, Kind.VERIFY):  # a preview is not the branch; a verify is between full checks
            post_statuses(config, store, recorded(store, kind, Outcome.FAILED, "x", reason=Reason.TASK_FAILED))
        post_statuses(config, store, recorded(store, Kind.SYNC, Outcome.INTERRUPTED, "stopped"))  # a stop: no news
    for kind, forge in forges.items():
        assert forge.refused == []
        name = "name" if kind == "gitlab" else "context"
        assert [(s["state"], s[name], s["target_url"]) for s in forge.statuses] == [
            ("success", "controller/staging", f"{EXTERNAL}/runs/{first.apps[0].run_id}"),
            ({"github": "failure", "gitlab": "failed", "gitea": "warning"}[kind], "controller/staging",
             f"{EXTERNAL}/runs/{drifted.apps[0].run_id}")]
        assert forge.statuses[0]["description"] == "sync converged: corrected: web1"


def test_a_failed_status_is_one_line_naming_the_host_and_never_the_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="controller")
    down = Forge("github", status=500)
    unreachable = f"http://127.0.0.1:{down.server.server_address[1]}"
    down.server.shutdown()
    down.server.server_close()
    failing = Forge("gitea", status=500)
    config = configured(tmp_path, [{"format": "github", "url": unreachable, "repository": "ops/fleet",
                                    "token_file": "forge.token"},
                                   {"format": "gitea", "url": failing.url, "repository": "ops/fleet",
                                    "token_file": "forge.token"}])
    try:
        with Store.of(config) as store:
            post_statuses(config, store, recorded(store, Kind.SYNC, Outcome.CONVERGED, "ok"))
    finally:
        failing.server.shutdown()
    lines = [r.getMessage() for r in caplog.records]
    host = unreachable.removeprefix("http://")
    assert lines == [f"commit status for staging to {host} failed: [Errno 111] Connection refused",
                     f"commit status for staging to {failing.url.removeprefix('http://')} failed: HTTP 500"]
    assert all(TOKEN not in line for line in lines)
