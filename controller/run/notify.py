"""Notifications: announce what changed in an app's state to a JSON webhook or Slack, once per change."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.clock import now
from controller.config import FORGES, Config, NotifyTarget
from controller.run.results import AppResult, Result
from controller.state.store import Store
from controller.verify.drift import merged
from controller.vocabulary import Event, Kind, Outcome, Reason, TaskStatus

log = logging.getLogger("controller")

TIMEOUT = 5.0
SETTLED = "ok"  # the condition of an app with nothing to announce, as stored since the first release
SHOWN = (TaskStatus.CHANGED, TaskStatus.FAILED, TaskStatus.UNREACHABLE)
ICONS = {Event.DRIFT_FOUND: ":warning:", Event.DRIFT_CORRECTED: ":wrench:", Event.REVISION_APPLIED: ":rocket:",
         Event.RUN_FAILED: ":x:", Event.RECOVERED: ":white_check_mark:", Event.VERIFICATION_FAILED: ":lock:",
         Event.HEALTH_DEGRADED: ":broken_heart:", Event.HEALTH_RECOVERED: ":green_heart:"}
TITLES = {Event.DRIFT_FOUND: "drift found", Event.DRIFT_CORRECTED: "drift corrected",
          Event.REVISION_APPLIED: "new revision rolled out", Event.RUN_FAILED: "run failed",
          Event.RECOVERED: "recovered", Event.VERIFICATION_FAILED: "revision refused (commit signatures)",
          Event.HEALTH_DEGRADED: "health degraded", Event.HEALTH_RECOVERED: "health recovered"}


@dataclass(frozen=True)
class Notice:
    """One event for one app; every text in it comes from the (already redacted) run result and the commit."""

    event: Event
    app: AppResult
    subject: str | None = None  # the commit's subject line: anyone who can push writes it
    link: str | None = None     # the run's page on the dashboard (ui.external_url)

    def payload(self) -> dict[str, Any]:
        app = self.app
        final = app.applied or app.check
        return {
            "event": self.event.value,
            "app": app.app,
            "revision": app.revision,
            "subject": self.subject,
            "previous_revision": app.previous,
            "outcome": app.outcome.value,
            "reason": app.reason.value if app.reason else None,
            "message": app.message,
            "run_id": app.run_id,
            "url": self.link,
            "hosts": {status: final.with_status(status) for status in SHOWN}
            if final else {},
            "health": {h.host: {"health": h.health.value, "detail": h.detail} for h in app.health},
            "controller": socket.gethostname(),
            "time": now(),
        }

    def slack(self) -> dict[str, Any]:
        """Slack's mrkdwn, every quoted text escaped so that ``<!channel>`` or ``<http://x|click>`` in a commit
        subject or a message stays text (neither a ping nor a link)."""
        app = self.app
        revision = f" at `{app.revision[:12]}`" if app.revision else ""
        subject = f" ({slack_escape(self.subject)})" if self.subject else ""
        link = f" <{slack_escape(self.link)}|run #{app.run_id}>" if self.link else ""
        return {"text": f"{ICONS[self.event]} *{slack_escape(app.app)}*: {TITLES[self.event]}{revision}{subject}: "
                        f"{slack_escape(self.text())}{link}"}

    def text(self) -> str:
        """What happened, in one line: the hosts whose health changed for a health event, else the run's message."""
        hosts = self.app.degraded if self.event is Event.HEALTH_DEGRADED else self.app.recovered
        if self.event not in (Event.HEALTH_DEGRADED, Event.HEALTH_RECOVERED):
            return self.app.message
        detail = {h.host: h.detail for h in self.app.health}
        return "; ".join(f"{host}: {detail[host]}" if detail.get(host) else host for host in hosts)


def slack_escape(text: str) -> str:
    """The three characters Slack's mrkdwn gives a meaning to, as its documentation asks to escape them."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def run_link(external_url: str | None, run_id: int | None) -> str | None:
    """The run's page on the dashboard as people reach it, when ``ui.external_url`` says where that is."""
    return f"{external_url}/runs/{run_id}" if external_url and run_id is not None else None


def condition(app: AppResult) -> str | None:
    """The app's state as far as notifications care; the same state is announced only once."""
    if app.outcome in (Outcome.SUSPENDED, Outcome.INTERRUPTED) or app.run_id is None:
        return None  # a stop (a restart of the daemon, Ctrl-C) is not news, nor is a run that never ran
    if app.halted and (app.reason is Reason.HEALTH_CHECK_FAILED or not app.outcome.troubled):
        # the halting run and every run at the halted head after it (a held sync, drift healed at the last good
        # revision, a check): one state, announced once
        return f"failed:{Reason.HEALTH_CHECK_FAILED}:{_digest(app.halted)}"
    if app.reason is Reason.DEPENDENCY_NOT_READY:
        return f"waiting:{_digest(app.message)}"  # held for another app: its failure is that app's news
    if app.outcome is Outcome.HELD:  # waiting for a window is the plan, not news; a revision to approve is
        return f"{'awaiting' if app.reason is Reason.APPROVAL_REQUIRED else 'held'}:{app.revision}"
    if app.outcome.troubled:
        final = merged(app.check, app.applied) if app.check else None
        hosts = sorted(h.host for h in final.hosts if h.status.broken) if final else []
        detail = ",".join(hosts) if hosts else app.message
        return f"failed:{app.reason}:{_digest(detail)}"
    if app.outcome is Outcome.DRIFTED and app.check is not None:
        drift = "\n".join(sorted(f"{t.host}\t{t.task}" for t in app.check.tasks if t.status is TaskStatus.CHANGED))
        return f"drifted:{_digest(drift)}"
    return SETTLED


def notices(app: AppResult, before: str | None, new_revision: bool) -> list[Event]:
    """What to announce about ``app`` given the state announced before; ``new_revision``: its revision was
    applied and not announced yet (a partial apply retried is the same revision, announced once)."""
    after = condition(app)
    if after is None:
        return []
    found = []
    if app.applied is not None and new_revision:
        found.append(Event.REVISION_APPLIED)
    elif app.applied is not None and app.check is not None and app.check.drifted and app.halted != app.revision:
        found.append(Event.DRIFT_CORRECTED)  # (a halted rollout corrected nothing: it is run-failed)
    if after != before:
        failed = after.startswith("failed:")
        if not failed and before is not None and before.startswith("failed:"):
            found.append(Event.RECOVERED)  # settled again, in sync or drifted, after a failure
        if after.startswith("drifted:"):
            found.append(Event.DRIFT_FOUND)
        elif after.startswith("awaiting:"):
            found.append(Event.APPROVAL_REQUIRED)
        elif failed:
            found.append(Event.VERIFICATION_FAILED if app.reason is Reason.VERIFICATION_FAILED else Event.RUN_FAILED)
    if app.degraded:
        found.append(Event.HEALTH_DEGRADED)
    if app.recovered:
        found.append(Event.HEALTH_RECOVERED)
    return found


def announce(config: Config, store: Store, result: Result) -> list[Notice]:
    """Send what changed to every notification target (best effort: a failed notification is only logged)."""
    sent: list[Notice] = []
    if result.kind is Kind.PREVIEW:
        return sent  # a preview never becomes the app's state, so it is never news
    subject = result.revision.subject if result.revision else None
    targets = [t for t in config.notify if t.format not in FORGES]
    for app in result.apps:
        before = store.condition(app.app)
        # a halted rollout's revision was not rolled out, whatever its first batch reached
        reached = app.applied is not None and app.halted is None and any(h.status.reached for h in app.applied.hosts)
        new_revision = bool(reached and app.revision and store.announce_revision(app.app, app.revision))
        found = [Notice(event, app, subject if app.revision else None, run_link(config.ui.external_url, app.run_id))
                 for event in notices(app, before, new_revision)]
        for notice in found:
            for target in targets:
                if not target.events or notice.event in target.events:
                    _post(target, notice)
        after = condition(app)
        if after is not None and after != before:
            store.set_condition(app.app, after)
        sent.extend(found)
    return sent


def _post(target: NotifyTarget, notice: Notice) -> None:
    try:
        url = target.url or Path(target.url_file or "").read_text().strip()
    except OSError as exc:
        log.warning("notification not sent: cannot read %s: %s", target.url_file, exc.strerror)
        return
    failed = post_json(url, notice.slack() if target.format == "slack" else notice.payload())
    if failed is not None:
        log.warning("notification %s for %s to %s", notice.event.value, notice.app.app, failed)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the request's Authorization header to wherever it points: it is a failure."""

    def redirect_request(self, *args: Any) -> None:
        return None


def post_json(url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> str | None:
    """POST ``payload`` as JSON (no redirects followed); None when it was taken, else why not in words that name only
    the receiving host (a Slack URL is a secret, and ``headers`` may hold a token)."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {
        "Content-Type": "application/json", "User-Agent": "gitops-controller", **(headers or {})})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=TIMEOUT) as response:
            response.read()
        return None
    except urllib.error.HTTPError as exc:
        detail = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        detail = str(getattr(exc, "reason", None) or type(exc).__name__)
    return f"to {urlsplit(url).netloc or '(invalid URL)'} failed: {detail}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
