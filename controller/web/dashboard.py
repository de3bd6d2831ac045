"""The dashboard: the fleet, an app, a run and the history as HTML pages and the same facts as JSON under /api/.

Every fact comes from the state store through the functions the CLI's ``--json`` output uses (``status``, ``runs``,
``run``), and the store holds only masked values, so nothing decrypted can appear. Pages are rendered on the
listener's workers (blocking SQLite reads never stall the loop), with Jinja2 autoescaping everything.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from controller.clock import parse_time
from controller.config import Config, HostPort
from controller.errors import Interrupted, LockBusy
from controller.interrupt import Cancel
from controller.report.colour import diff_kind
from controller.report.documents import (
    audit_document,
    commit_document,
    detail_document,
    run_document,
    status_document,
    suspension_document,
)
from controller.report.metrics import Metrics
from controller.report.render import rollout_hosts
from controller.run.recovery import recover
from controller.run.results import Progress
from controller.run.schedule import DriftSchedule
from controller.state.records import LiveTask
from controller.state.retention import GONE
from controller.state.store import Store
from controller.vocabulary import RUNNING, Action, HostState, Kind, Outcome, TaskStatus, Trigger
from controller.web.access import Access, Holder, Throttle
from controller.web.actions import Actions
from controller.web.health import DaemonHealth
from controller.web.listener import Listener, Reply, Routes, WebRequest

log = logging.getLogger("controller")

PAGE_SIZE = 50        # runs per history page
RECENT_RUNS = 20      # runs (and audit entries) on an app's page
AUDIT_ENTRIES = 200   # on the audit page
LIVE_RECENT = 15      # the newest task results a running run's page lists
POLL_SECONDS = 2      # how often a page asks whether anything changed (live.js; the meta refresh is slower)
HEADERS = (
    # the pages need nothing from elsewhere; scripts only from our own file, so injected markup could not run
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
STATIC = {"style.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
NOTICES = {
    "started": "Sync started: this page follows it.",
    "checking": "Check started (nothing is changed): this page follows it.",
    "applying": "Apply started (policy detect, on request): this page follows it.",
    "busy": "Another run holds the lock; try again when it has finished.",
    "suspended": "Suspended: watch and sync leave this app alone until it is resumed.",
    "resumed": "Resumed: the next cycle reconciles this app.",
    "resume-first": "This app is suspended: resume it before syncing it.",
    "approved": "Approved: the next sync applies this revision.",
    "nothing-to-approve": "That revision does not wait for approval (any more): see what does below.",
}
OUTCOMES = (RUNNING, *(o.value for o in Outcome if o is not Outcome.SUSPENDED))
VERB_NOTICES = {Action.SYNC: "started", Action.CHECK: "checking", Action.APPLY: "applying",
                Action.SUSPEND: "suspended", Action.RESUME: "resumed", Action.APPROVE: "approved"}
ACTION = re.compile(rf"/(?:api/)?apps/([^/]+)/({'|'.join(Action)})")


class NotFound(Exception):
    """A page that does not exist: 404."""


class Dashboard:
    """Routes requests to views; ``handle`` runs on a page worker thread."""

    def __init__(self, config: Config, access: Access, actions: Actions, schedule: DriftSchedule | None,
                 standby: Callable[[], str | None] = lambda: None) -> None:
        """``schedule``: the drift checks the daemon serving these pages runs; None under ``serve``, where
        nothing here runs one (cron or a person does), so no page promises a next check. ``standby``: why the
        pages may not act now (a watch standing by for another bastion's), None when they may."""
        self.config = config
        self.standby = standby
        self.access = access
        self.actions = actions
        self.throttle = Throttle()
        self.schedule = schedule
        self.env = Environment(loader=PackageLoader("controller.web", "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(short=short, ago=ago, stamp=lambda s: (s or "-")[:19].replace("T", " "),
                                seconds=seconds, url=lambda s: quote(str(s), safe=""), diff_kind=diff_kind)
        self.env.globals["commit_url"] = config.source.commit_url
        self.env.globals["rollout_hosts"] = rollout_hosts
        self.static = {name: (files("controller.web").joinpath("static", name).read_bytes(), kind)
                       for name, kind in STATIC.items()}
        self.views: dict[str, Callable[[Store, WebRequest, list[str]], dict[str, Any]]] = {
            "fleet": self.fleet, "app": self.app, "host": self.host, "run": self.run, "history": self.history,
            "audit": self.audit}

    # -- routing -------------------------------------------------------------
    def handle(self, request: WebRequest) -> Reply:
        path = request.path
        if request.method == "GET" and path.startswith("/static/") and path[8:] in self.static:
            body, kind = self.static[path[8:]]
            return Reply(200, body, kind, (("Cache-Control", "max-age=300"), ("X-Content-Type-Options", "nosniff")))
        if not self.access.host_allowed(request.headers):
            return self.error(request, 403, "this dashboard answers only to loopback names (localhost, 127.0.0.1)")
        guessing = self.access.protected and (
            (path == "/login" and request.method == "POST") or "authorization" in request.headers)
        if guessing and not self.throttle.allowed(request.client):  # refused before any token is compared
            return self.error(request, 429, "too many wrong tokens from this address: wait a second",
                              (("Retry-After", "1"),))
        if path == "/login":
            return self.login(request)
        holder = self.access.holder(request.headers)
        if holder is None:
            if "authorization" in request.headers:
                self.throttle.wrong(request.client, "Authorization")
            if path.startswith("/api/"):
                return self.reply(401, json_bytes({"error": "a token is required (Authorization: Bearer)"}),
                                  "application/json", (("WWW-Authenticate", 'Bearer realm="controller"'),))
            return self.login_page(request, 401, path)
        try:
            if request.method == "POST":
                return self.act(request, holder)
            return self.page(request, holder)
        except NotFound as missing:
            return self.error(request, 404, str(missing))

    def page(self, request: WebRequest, holder: Holder) -> Reply:
        path, api = request.path, request.path.startswith("/api/")
        name, parts = route(path.removeprefix("/api") if api else path, api)
        with Store.of(self.config) as store:
            if name == "stamp":
                page = parse_qs(request.query).get("page", [""])[0]
                return self.reply(200, json_bytes({"stamp": self.stamp(store, page)}), "application/json")
            facts = self.views[name](store, request, parts)
            if api:
                return self.reply(200, json_bytes(facts), "application/json")
            running_runs = [(r.id, r.app) for r in store.runs(limit=5, outcome=RUNNING)]
            # a run is going on: one in the store, or a sync this process started (not recorded yet)
            stamp, busy = self.stamp(store, path), self.actions.running is not None or bool(running_runs)
        notice = parse_qs(request.query).get("notice", [""])[0]
        html = self.env.get_template(f"{name}.html").render(
            **facts, stamp=stamp, busy=busy, running_runs=running_runs, csrf=self.access.csrf, poll=POLL_SECONDS,
            notice=NOTICES.get(notice), standby=self.standby(), login=self.access.protected, holder=holder,
            outcomes=OUTCOMES,
            triggers=tuple(Trigger),
            kinds=tuple(Kind), states=(RUNNING, *HostState, Outcome.CONVERGED, Outcome.INTERRUPTED))
        return self.reply(200, html.encode(), "text/html; charset=utf-8", self.access.cookie_headers())

    def act(self, request: WebRequest, holder: Holder) -> Reply:
        """Sync, suspend or resume: a form from a page (redirect back) or a Bearer client under /api/ (JSON); recorded
        in the audit trail under the holder's name."""
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if request.path == "/logout":
            return self.reply(303, b"", "text/plain", (("Location", "/"), *self.access.cookie_headers(session=False)))
        match = ACTION.fullmatch(request.path)
        if match is None:
            raise NotFound(f"no action at {request.path}")
        standby = self.standby()  # nothing here acts, whoever asks and however
        if standby is not None:
            log.info("ui: %r from %s refused: %s", request.path, request.client, standby)
            return self.error(request, 503, standby)
        # a header a browser never adds by itself proves the request is not cross-site; a form must prove it
        why = None if self.access.bearer(request.headers) else self.access.csrf_passed(request.headers, form)
        if why is None and holder.read_only:
            why = f"the token of {holder.name} is read-only: it reads every page and acts on none"
        if why is not None:
            log.warning("ui: %r from %s refused: %s", request.path, request.client, why)  # repr: no control codes
            return self.error(request, 403, why)
        app, verb = unquote(match.group(1)), Action(match.group(2))
        host = form.get("host") or None  # sync or check one host: a host of the app, never a pattern
        with Store.of(self.config) as store:
            if app not in store.apps():
                raise NotFound(f"no app {app!r} has been reconciled here")
            if host is not None and host not in {h.host for h in store.hosts(app)}:
                raise NotFound(f"no host {host!r} of app {app!r} has been reconciled here")
            suspended = app in store.suspensions()
        if verb.reconciles and suspended:  # the cycle would skip it: say so rather than "started"
            return self.done(request, app, verb, 409, "resume-first")
        status, notice, who = 202, VERB_NOTICES[verb], holder.who(request.client)
        try:
            if verb.reconciles:
                self.actions.sync(app, who, apply=verb is Action.APPLY, check=verb is Action.CHECK, limit=host)
            elif verb is Action.SUSPEND:
                self.actions.suspend(app, form.get("reason", "")[:200], who)
            elif verb is Action.APPROVE:
                if not self.actions.approve(app, form.get("revision", ""), who):
                    status, notice = 409, "nothing-to-approve"
            else:
                self.actions.resume(app, who)
        except LockBusy:
            status, notice = 409, "busy"
        return self.done(request, app, verb, status, notice)

    def done(self, request: WebRequest, app: str, verb: Action, status: int, notice: str) -> Reply:
        """The answer to an action: JSON under /api/, else back to the app's page, which says what happened."""
        if request.path.startswith("/api/"):
            body = {"app": app, "action": verb, "notice": NOTICES[notice]}
            return self.reply(status, json_bytes(body), "application/json")
        return self.reply(303, b"", "text/plain", (("Location", f"/apps/{quote(app, safe='')}?notice={notice}"),))

    def login(self, request: WebRequest) -> Reply:
        if not self.access.protected:
            return self.reply(303, b"", "text/plain", (("Location", "/"),))
        if request.method != "POST":
            return self.login_page(request, 200, parse_qs(request.query).get("next", ["/"])[0])
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        target = form.get("next", "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"  # never a redirect to another site (browsers read /\\host as //host)
        holder = self.access.login(form.get("token", ""))
        if self.access.csrf_passed(request.headers, form) is not None or holder is None:
            self.throttle.wrong(request.client, "login")
            return self.login_page(request, 401, target, failed=True)
        log.info("ui: login of %s from %s", holder.name, request.client)
        return self.reply(303, b"", "text/plain", (("Location", target), *self.access.cookie_headers(session=holder)))

    def login_page(self, request: WebRequest, status: int, target: str, failed: bool = False) -> Reply:
        html = self.env.get_template("login.html").render(
            next=target, failed=failed, csrf=self.access.csrf, stamp="", busy=False, running_runs=(), poll=POLL_SECONDS,
            login=False)
        return self.reply(status, html.encode(), "text/html; charset=utf-8", self.access.cookie_headers())

    def error(self, request: WebRequest, status: int, message: str,
              headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        if request.path.startswith("/api/"):
            return self.reply(status, json_bytes({"error": message}), "application/json", headers)
        html = self.env.get_template("error.html").render(
            status=status, message=message, stamp="", busy=False, running_runs=(), poll=POLL_SECONDS,
            login=False)
        return self.reply(status, html.encode(), "text/html; charset=utf-8", headers)

    def summarise(self) -> None:
        """Log the window's wrong and refused tokens in one line (the listener calls it every window)."""
        self.throttle.summarise()

    @staticmethod
    def reply(status: int, body: bytes, kind: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return Reply(status, body, kind, (*HEADERS, *headers))

    def stamp(self, store: Store, page: str) -> str:
        """What live pages compare to know when to refresh: a run's own page also each task result it has
        (the others only when runs start and end, so that a form being filled in is not swapped away)."""
        try:
            name, parts = route(page, api=False)
        except NotFound:
            name, parts = "", []
        live = store.live_stamp(int(parts[0])) if name == "run" else ""
        return f"{store.stamp()}:{self.actions.running or ''}:{live}"

    # -- views: the facts of each page, as the JSON API returns them -------------
    def fleet(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """Every app as `controller status --json` has it, with its commit, host counts and next check; ``?q=``
        keeps the apps whose name holds it, ``?state=`` those in that state or with a host in it."""
        query = parse_qs(request.query)
        filters = {key: query.get(key, [""])[0] for key in ("q", "state")}
        return {"apps": self._apps(store, **filters), "filters": filters}

    def _apps(self, store: Store, q: str = "", state: str = "") -> list[dict[str, Any]]:
        rows = []
        for status in store.status():
            # a state matches what the page shows: the app's badge (its newest failure first) or a host's
            shown = (status.state or RUNNING, *((status.failure.outcome,) if status.failure else ()),
                     *(h.state for h in status.hosts))
            if q.lower() not in status.app.lower() or state not in ("", *shown):
                continue
            revision = status.applied_revision
            due = None if status.suspended or self.schedule is None else self.schedule.next_check(
                parse_time(status.last_run.started))
            rows.append({**status_document(status),
                         "commit": commit_document(store.revision(revision) if revision else None),
                         "host_states": dict(Counter(h.state for h in status.hosts)),
                         "scheduled": self.schedule is not None,
                         "next_check": due.isoformat(timespec="seconds") if due else None})
        return rows

    def app(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """One app's status row (with its hosts) and its recent runs (`controller history --app`)."""
        rows = [row for row in self._apps(store) if row["app"] == parts[0]]
        if not rows:
            raise NotFound(f"no app {parts[0]!r} has been reconciled here")
        # the newest full check's drift report, inline: what differs on the hosts now, as far as anyone looked
        full = store.latest(parts[0], Kind.CHECK, Kind.SYNC, Kind.VERIFY, full=True)
        detail = store.run(full.id) if full is not None else None
        return {"app": rows[0], "runs": [run_document(r) for r in store.runs(parts[0], RECENT_RUNS)],
                "suspension": suspension_document(store.suspensions().get(parts[0])),
                "running": self.actions.running == parts[0],
                "awaiting": store.awaiting_approval(parts[0]),
                "audit": [audit_document(a) for a in store.audit(parts[0], RECENT_RUNS)],
                "drift": None if detail is None else detail_document(detail)}

    def host(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """One host of an app and its timeline: what each full run did there (rolled out, drift found,
        corrected...), when, and by what trigger, newest first."""
        app, name = parts
        row = next((h for h in store.hosts(app) if h.host == name), None)
        events = store.host_events(app, name)
        if row is None and not events:
            raise NotFound(f"no host {name!r} of app {app!r} has been reconciled here")
        return {"app": app, "host": name, "record": None if row is None else asdict(row),
                "events": [{**run_document(e.run), "happened": e.happened.value} for e in events]}

    def run(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """One run as `controller show --json` has it, with its commit; while it runs, its task results so far."""
        detail = store.run(int(parts[0]))
        if detail is None:
            raise NotFound(f"no run {parts[0]} in the state store: {GONE}")
        revision = detail.run.revision
        return {"run": {**detail_document(detail),
                        "commit": commit_document(store.revision(revision) if revision else None)},
                "live": None if detail.run.finished else live_document(store.live(detail.run.id),
                                                                       store.live_rollout(detail.run.id))}

    def history(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """Runs newest first (`controller history --json`), filtered by app, outcome, trigger and kind, a page at a
        time."""
        query = parse_qs(request.query)
        filters = {key: query.get(key, [""])[0] for key in ("app", "outcome", "trigger", "kind")}
        wanted = {k: v or None for k, v in filters.items()}
        total = store.count_runs(wanted["app"], outcome=wanted["outcome"], trigger=wanted["trigger"],
                                 kind=wanted["kind"])
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = query.get("page", ["1"])[0]
        number = min(int(page), pages) if page.isdigit() and int(page) > 0 else 1
        runs = store.runs(wanted["app"], PAGE_SIZE, outcome=wanted["outcome"], trigger=wanted["trigger"],
                          kind=wanted["kind"], offset=(number - 1) * PAGE_SIZE)
        chosen = {k: v for k, v in filters.items() if v}
        return {"runs": [run_document(r) for r in runs], "total": total, "page": number, "pages": pages,
                "filters": filters,
                "apps": store.apps(),
                "previous": f"?{urlencode({**chosen, 'page': number - 1})}" if number > 1 else None,
                "next": f"?{urlencode({**chosen, 'page': number + 1})}" if number < pages else None}


    def audit(self, store: Store, request: WebRequest, parts: list[str]) -> dict[str, Any]:
        """What people did to apps, newest first (`controller history --audit --json`), of one app with ``?app=``."""
        app = parse_qs(request.query).get("app", [""])[0]
        return {"audit": [audit_document(a) for a in store.audit(app or None, AUDIT_ENTRIES)], "app": app,
                "apps": store.apps()}


def route(path: str, api: bool) -> tuple[str, list[str]]:
    """The view for a path (without /api) and its parameters; NotFound otherwise."""
    host = (r"/apps/([^/]+)/hosts/([^/]+)", "host")
    table = ((r"/apps", "fleet"), (r"/apps/([^/]+)", "app"), host, (r"/runs/([0-9]{1,15})", "run"),
             (r"/runs", "history"), (r"/audit", "audit"), (r"/stamp", "stamp")) if api else (
        (r"/", "fleet"), (r"/apps/([^/]+)", "app"), host, (r"/runs/([0-9]{1,15})", "run"), (r"/history", "history"),
        (r"/audit", "audit"))
    for pattern, name in table:
        match = re.fullmatch(pattern, path)
        if match:
            return name, [unquote(g) for g in match.groups()]
    raise NotFound(f"no page at {'/api' if api else ''}{path}")


def live_document(results: tuple[LiveTask, ...], rollout: dict[str, Any] | None) -> dict[str, Any]:
    """A running run's task results so far: per host and phase, how many, how many changed or failed, and the
    latest; the newest results first; and its rollout in batches as it stands."""
    hosts: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        row = hosts.setdefault((result.phase, result.host), {"phase": result.phase, "host": result.host, "tasks": 0,
                                                             "changed": 0, "failed": 0})
        row["tasks"] += 1
        row["changed"] += result.status is TaskStatus.CHANGED
        row["failed"] += result.status.broken
        row["latest"], row["status"], row["at"] = result.task, result.status, result.at
    return {"hosts": list(hosts.values()), "recent": [asdict(r) for r in reversed(results[-LIVE_RECENT:])],
            "rollout": rollout}


def json_bytes(facts: Any) -> bytes:
    return (json.dumps(facts, indent=1) + "\n").encode()


def short(sha: str | None) -> str:
    return (sha or "-")[:12]


def ago(stamp: str | None) -> str:
    """``2026-11-23T10:42:05+00:00`` as ``5 min ago`` (or ``in 5 min`` for a time to come)."""
    if not stamp:
        return "-"
    delta = (datetime.now(UTC) - parse_time(stamp)).total_seconds()
    future, delta = delta < 0, abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            text = f"{int(delta // size)} {unit}"
            break
    else:
        text = f"{int(delta)} s"
    return f"in {text}" if future else f"{text} ago"


def seconds(run: dict[str, Any]) -> str:
    """How long a run took (or has been running)."""
    end = parse_time(run["finished"]) if run["finished"] else datetime.now(UTC)
    return f"{(end - parse_time(run['started'])).total_seconds():.0f} s"


def serve(config: Config, listen: HostPort, cancel: Cancel, progress: Progress) -> None:
    """``controller serve``: the dashboard alone on ``listen`` until SIGTERM, reading the state store that
    `sync` from cron writes; its actions run the same cycle."""
    actions = Actions(config, progress)
    dashboard = Dashboard(config, Access.of(config.ui, listen), actions, schedule=None)
    health = DaemonHealth(running_now=lambda: actions.running and Trigger.UI)

    listener = Listener(listen, Routes(branch=config.source.branch, secrets={}, max_body=0,
                                       on_push=lambda provider, sha: None,
                                       health=health.report, metrics=Metrics(lambda: Store.of(config)).render,
                                       pages=dashboard.handle, summarise=dashboard.summarise))
    with Store.of(config) as store:
        recover(config, store)
    listener.start()
    log.info("dashboard on http://%s/ (%s)", HostPort(listen.host, listener.port),
             "token required" if dashboard.access.protected else "no token: loopback only")
    try:
        while not cancel():
            cancel.event.wait(1)
    except Interrupted:
        pass  # the way out: stop serving
    finally:
        log.info("stopping")
        health.stopping = True
        actions.stop()
        listener.stop()
