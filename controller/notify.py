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

from controller.config import NotifyTarget
from controller.drift import merged
from controller.outcomes import Event, Kind, Outcome, Reason
from controller.results import AppResult, Result
from controller.state import Store, now

log = logging.getLogger("controller")

TIMEOUT = 5.0
OK = "ok"
ICONS = {Event.DRIFT_FOUND: ":warning:", Event.DRIFT_CORRECTED: ":wrench:", Event.REVISION_APPLIED: ":rocket:",
         Event.RUN_FAILED: ":x:", Event.RECOVERED: ":white_check_mark:", Event.VERIFICATION_FAILED: ":lock:"}
TITLES = {Event.DRIFT_FOUND: "drift found", Event.DRIFT_CORRECTED: "drift corrected",
          Event.REVISION_APPLIED: "new revision applied", Event.RUN_FAILED: "run failed",
          Event.RECOVERED: "recovered", Event.VERIFICATION_FAILED: "revision refused (commit signatures)"}


@dataclass(frozen=True)
class Notice:
    """One event for one app; every text in it comes from the (already redacted) run result."""

    event: Event
    app: AppResult

    def payload(self) -> dict[str, Any]:
        app = self.app
        final = app.applied or app.check
        return {
            "event": self.event.value,
            "app": app.app,
            "revision": app.revision,
            "previous_revision": app.previous,
            "outcome": app.outcome.value,
            "reason": app.reason.value if app.reason else None,
            "message": app.message,
            "run_id": app.run_id,
            "hosts": {status: final.with_status(status) for status in ("changed", "failed", "unreachable")}
            if final else {},
            "controller": socket.gethostname(),
            "time": now(),
        }

    def slack(self) -> dict[str, Any]:
        app = self.app
        revision = f" at `{app.revision[:12]}`" if app.revision else ""
        return {"text": f"{ICONS[self.event]} *{app.app}*: {TITLES[self.event]}{revision}: {app.message}"}


def condition(app: AppResult) -> str | None:
    """The app's state as far as notifications care; the same state is announced only once."""
    if app.outcome in (Outcome.SUSPENDED, Outcome.INTERRUPTED) or app.run_id is None:
        return None  # a stop (a restart of the daemon, Ctrl-C) is not news, nor is a run that never ran
    if app.outcome.troubled:
        final = merged(app.check, app.applied) if app.check else None
        hosts = sorted(final.with_status("failed") + final.with_status("unreachable")) if final else []
        detail = ",".join(hosts) if hosts else app.message
        return f"failed:{app.reason}:{_digest(detail)}"
    if app.outcome is Outcome.DRIFTED and app.check is not None:
        drift = "\n".join(sorted(f"{t.host}\t{t.task}" for t in app.check.tasks if t.status == "changed"))
        return f"drifted:{_digest(drift)}"
    return OK


def notices(app: AppResult, before: str | None, new_revision: bool) -> list[Notice]:
    """What to announce about ``app`` given the state announced before; ``new_revision``: its revision was
    applied and not announced yet (a partial apply retried is the same revision, announced once)."""
    after = condition(app)
    if after is None:
        return []
    found = []
    if app.applied is not None and new_revision:
        found.append(Event.REVISION_APPLIED)
    elif app.applied is not None and app.check is not None and app.check.drifted:
        found.append(Event.DRIFT_CORRECTED)
    if after != before:
        if after.startswith("drifted:"):
            found.append(Event.DRIFT_FOUND)
        elif after.startswith("failed:"):
            found.append(Event.VERIFICATION_FAILED if app.reason is Reason.VERIFICATION_FAILED else Event.RUN_FAILED)
        elif before is not None and before.startswith("failed:"):
            found.append(Event.RECOVERED)
    return [Notice(event, app) for event in found]


def announce(targets: tuple[NotifyTarget, ...], store: Store, result: Result) -> list[Notice]:
    """Send what changed to every target (best effort: a failed notification is only logged)."""
    sent: list[Notice] = []
    if result.kind is Kind.PREVIEW:
        return sent  # a preview never becomes the app's state, so it is never news
    for app in result.apps:
        before = store.condition(app.app)
        reached = app.applied is not None and bool(app.applied.with_status("ok") + app.applied.with_status("changed"))
        new_revision = bool(reached and app.revision and store.announce_revision(app.app, app.revision))
        found = notices(app, before, new_revision)
        for notice in found:
            for target in targets:
                if not target.events or notice.event.value in target.events:
                    _post(target, notice)
        after = condition(app)
        if after is not None and after != before:
            store.set_condition(app.app, after)
        sent.extend(found)
    return sent


def _post(target: NotifyTarget, notice: Notice) -> None:
    body = json.dumps(notice.slack() if target.format == "slack" else notice.payload()).encode()
    try:
        url = target.url or Path(target.url_file or "").read_text().strip()
    except OSError as exc:
        log.warning("notification not sent: cannot read %s: %s", target.url_file, exc.strerror)
        return
    request = urllib.request.Request(url, body, {"Content-Type": "application/json",
                                                 "User-Agent": "gitops-controller"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # the URL itself is a secret for Slack: name only where it points
        where = urlsplit(url).netloc or "(invalid URL)"
        detail = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
        log.warning("notification %s for %s to %s failed: %s", notice.event.value, notice.app.app, where, detail)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
