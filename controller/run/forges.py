"""Commit statuses: after each check and sync, its outcome on the commit in GitHub, GitLab or Gitea/Forgejo.

A team sees on the commit it merged whether the servers have it, with a link to the run. The status is posted when
it differs from what the app's previous check or sync at the same commit told the forge (an interrupted run told it
nothing), so a drift schedule or a verify every 30 s does not fill the forge with copies (GitHub keeps at most 1,000
per commit and context). Best effort, like notifications: a failed post is one log line naming the forge's host, and
never fails the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from controller.config import FORGES, Config, NotifyTarget
from controller.run.notify import post_json, run_link
from controller.run.results import AppResult, Result
from controller.state.store import Store
from controller.vocabulary import Kind, Outcome

log = logging.getLogger("controller")

DESCRIPTION = 140  # characters: GitHub's limit, the smallest of the three


@dataclass(frozen=True)
class Forge:
    """How one forge's API takes a commit status (each as its documentation describes it)."""

    path: str                                # under the API's URL; {repository} and {sha} filled in
    context: str                             # the field that tells this status from other systems'
    auth: Callable[[str], dict[str, str]]    # the headers that carry the token
    states: dict[Outcome, str]               # the forge's state for each outcome posted


# a held apply waits for its maintenance window: pending on every forge
SUCCESS = {Outcome.IN_SYNC: "success", Outcome.CONVERGED: "success", Outcome.HELD: "pending"}
API: dict[str, Forge] = {
    # POST /repos/{owner}/{repo}/statuses/{sha}: error | failure | pending | success
    "github": Forge("/repos/{repository}/statuses/{sha}", "context", lambda token: {
        "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28"}, {
        **SUCCESS, Outcome.DRIFTED: "failure", Outcome.UNVERIFIED: "failure", Outcome.PARTIAL: "failure",
        Outcome.FAILED: "error"}),
    # POST /api/v4/projects/:id/statuses/:sha: pending | running | success | failed | canceled | skipped
    "gitlab": Forge("/api/v4/projects/{repository}/statuses/{sha}", "name", lambda token: {
        "PRIVATE-TOKEN": token}, {
        **SUCCESS, Outcome.DRIFTED: "failed", Outcome.UNVERIFIED: "failed", Outcome.PARTIAL: "failed",
        Outcome.FAILED: "failed"}),
    # POST /api/v1/repos/{owner}/{repo}/statuses/{sha}: pending | success | error | failure | warning
    "gitea": Forge("/api/v1/repos/{repository}/statuses/{sha}", "context", lambda token: {
        "Authorization": f"token {token}"}, {
        **SUCCESS, Outcome.DRIFTED: "warning", Outcome.UNVERIFIED: "warning", Outcome.PARTIAL: "failure",
        Outcome.FAILED: "error"}),
}

POSTED = frozenset(outcome for forge in API.values() for outcome in forge.states)  # what some forge is told


def post_statuses(config: Config, store: Store, result: Result) -> None:
    """Post each app's outcome to its commit on every forge target, where it is news to the forge."""
    targets = [t for t in config.notify if t.format in FORGES]
    for app in result.apps:
        if not targets or app.kind not in (Kind.CHECK, Kind.SYNC) or app.run_id is None or not app.revision:
            continue  # a preview, a verify, or a run that never reached a commit
        if app.halted and app.outcome is not Outcome.FAILED:
            continue  # the halting run told the halted commit; holding it, or healing at the last good, is no news
        previous = store.previous_run(app.app, app.run_id, POSTED)
        for target in targets:
            forge = API[target.format]
            state = forge.states.get(app.outcome)  # none for a stop (interrupted): not news
            told = previous is not None and previous.revision == app.revision and previous.outcome is not None \
                and forge.states.get(previous.outcome) == state
            if state is not None and not told:
                _post(target, forge, app, state, run_link(config.ui.external_url, app.run_id))


def _post(target: NotifyTarget, forge: Forge, app: AppResult, state: str, link: str | None) -> None:
    assert target.url is not None and target.repository is not None and target.token_file is not None
    try:
        token = Path(target.token_file).read_text().strip()
    except OSError as exc:
        log.warning("commit status for %s not sent: cannot read %s: %s", app.app, target.token_file, exc.strerror)
        return
    repository = quote(target.repository, safe="" if target.format == "gitlab" else "/")
    url = target.url.rstrip("/") + forge.path.format(repository=repository, sha=app.revision)
    body = {"state": state, "description": f"{app.kind} {app.outcome}: {app.message}"[:DESCRIPTION],
            forge.context: f"controller/{app.app}", **({"target_url": link} if link else {})}
    failed = post_json(url, body, forge.auth(token))
    if failed is not None:
        log.warning("commit status for %s %s", app.app, failed)
