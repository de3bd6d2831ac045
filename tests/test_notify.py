"""Notifications and commit statuses, in process: a real state store, real HTTP receivers on 127.0.0.1.

GitHub, GitLab and Gitea cannot run here, so ``Forge`` is a local HTTP server that takes a commit status only in
the shape each one's API documents (path, token header, fields, states) and refuses anything else. That statuses
and notifications follow real runs is tests/test_watch.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.ansible.results import TaskResult
from controller.config import Config, load_config
from controller.run.forges import post_statuses
from controller.run.notify import announce
from controller.run.results import AppResult, Request, Result
from controller.source.revision import Revision
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.vocabulary import Kind, Mode, Outcome, Policy, Reason, TaskStatus
from tests.support.receiver import API, EXTERNAL, TOKEN, Forge, Receiver, forge_targets

SHA = "4e8d883a12f4c0ffee0ddba11c0ffee0ddba11c0"

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
        # ...and told the forge nothing, so the same drift after it is no news either
        post_statuses(config, store, recorded(store, Kind.CHECK, Outcome.DRIFTED, "drifted: web1", DRIFT))
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
