"""``controller watch``: reconcile on pushes, polls and a drift schedule until SIGTERM, reusing the cycle."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime

from controller.ansible.results import TaskResult
from controller.clock import parse_time
from controller.config import Config
from controller.daemon.refwatch import RefWatcher, local_bare_repository
from controller.errors import ControllerError, Interrupted
from controller.interrupt import Cancel
from controller.report.metrics import Metrics
from controller.run.cycle import run_cycle
from controller.run.results import AppResult, Request, Result
from controller.run.schedule import DriftSchedule
from controller.secrets.sops import read_secret_file
from controller.source.git import RemoteUrl
from controller.state.locks import Leadership
from controller.state.store import Store
from controller.vocabulary import NO_APP, Mode, Outcome, Provider, Reason, TaskStatus, Trigger, failure
from controller.web.access import Access
from controller.web.actions import Actions
from controller.web.dashboard import Dashboard
from controller.web.health import DaemonHealth
from controller.web.listener import Listener, Routes
from controller.web.webhooks import shared_in_clear

log = logging.getLogger("controller")

MAX_SLEEP = 3600.0  # waits are bounded even when nothing is scheduled (math.inf)
LOCK_WAIT = 24 * 3600.0  # the daemon queues behind a manual sync instead of giving up
# which trigger names the run when several arrived together
TRIGGER_ORDER = (Trigger.RETRY, Trigger.WEBHOOK, Trigger.PUSH, Trigger.WINDOW, Trigger.POLL)
# with a PostgreSQL store two bastions share: how often the standby asks for the leader lock, and the leader
# checks it still holds it (a takeover within about this long of the leader's death)
LEADER_CHECK = 2.0
# failures a retry cannot mend: the revision stays refused (unsigned) or halted (its rollout) until the branch moves
WAIT_FOR_THE_BRANCH = (Reason.VERIFICATION_FAILED, Reason.HEALTH_CHECK_FAILED)


class Triggers:
    """Reasons to sync, coalesced: a burst of pushes within ``debounce`` seconds makes one run."""

    def __init__(self, debounce: float) -> None:
        self.debounce = debounce
        self._cond = threading.Condition()
        self._kinds: set[Trigger] = set()
        self._apps: set[str] = set()  # the apps a person approved or resumed on the dashboard
        self._first: float | None = None

    def add(self, kind: Trigger) -> None:
        with self._cond:
            self._kinds.add(kind)
            if self._first is None:
                self._first = time.monotonic()
            self._cond.notify_all()

    def ask(self, app: str) -> None:
        """A person approved or resumed ``app`` on the dashboard: a cycle of that app (trigger ui)."""
        with self._cond:
            self._apps.add(app)
        self.add(Trigger.UI)

    def asked(self) -> set[str]:
        """The apps asked for since the last call."""
        with self._cond:
            apps, self._apps = self._apps, set()
            return apps

    @property
    def waiting(self) -> bool:
        """A trigger arrived that no cycle has taken yet."""
        with self._cond:
            return bool(self._kinds)

    def take(self, deadline: float) -> set[Trigger]:
        """Wait until a trigger has settled or the monotonic ``deadline`` passes; return what arrived."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._first is not None and now >= self._first + self.debounce:
                    kinds, self._kinds, self._first = self._kinds, set(), None
                    return kinds
                if now >= deadline:
                    return set()
                wake = deadline if self._first is None else min(deadline, self._first + self.debounce)
                self._cond.wait(min(wake - now, MAX_SLEEP))


class LogProgress:
    """Progress of a cycle as log lines (journald keeps them)."""

    def step(self, message: str) -> None:
        log.info("%s", message)

    def started(self, app: str, phase: str, task: str, host: str) -> None:
        """Not logged: a line per task and host would bury the results in the journal."""

    def task(self, app: str, phase: str, result: TaskResult) -> None:
        if result.status is not TaskStatus.OK:
            log.info("[%s %s] %s: %s  %s", app, phase, result.host, result.status, result.task)

    def notice(self, message: str) -> None:
        log.warning("%s", message)


class Watch:
    """The daemon: one loop that turns triggers into cycles, one at a time, under the shared lock."""

    def __init__(self, config: Config, cancel: Cancel) -> None:
        self.config = config
        self.cancel = cancel
        self.settings = config.watch
        self.triggers = Triggers(config.watch.debounce)
        self.schedule = DriftSchedule.of(config.watch)
        self.metrics = Metrics(lambda: Store.of(config))
        self.health = DaemonHealth()
        self.leadership = Leadership(config)
        self.health.role = "standby" if self.leadership.shared else None  # until it knows it leads
        self.was: str | None = None  # the role last taken (and logged)
        self.listener: Listener | None = None
        self.known_apps: set[str] = set()
        self.failures = 0
        self.retry_at = math.inf
        self.window_ends = math.inf  # when a maintenance window that held an apply ends: the apply runs then
        self.next_poll = time.monotonic()  # the first cycle runs at once
        self.next_verify = self._after(self.settings.verify_interval)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; a cycle in progress is stopped and unwound first."""
        with ExitStack() as stack:
            self._start(stack)
            stack.callback(self.leadership.close)
            with contextlib.suppress(Interrupted):
                while not self.cancel():
                    if self._lead():
                        self._turn()
                    else:  # a trigger taken here is not lost: the leader (or this watch, taking over) polls
                        self.triggers.take(time.monotonic() + LEADER_CHECK)
            self.health.stopping = True
            log.info("stopping: %s", "signal received")

    def _start(self, stack: ExitStack) -> None:
        if self.settings.listen:
            dashboard = None
            if self.config.ui.enabled:  # refused before anything listens when it would be open to anyone
                access = Access.of(self.config.ui, self.settings.listen)
                actions = Actions(self.config, LogProgress(), acted=self.triggers.ask)
                stack.callback(actions.stop)  # after the listener stops: a dashboard sync unwinds
                dashboard = Dashboard(self.config, access, actions, self.schedule, standby=self._standby)
            secrets = self._secrets()
            self.listener = Listener(self.settings.listen, Routes(
                branch=self.config.source.branch, secrets=secrets, max_body=self.settings.max_body_bytes,
                on_push=lambda provider, sha: self._pushed(Trigger.WEBHOOK, sha), health=self.health.report,
                metrics=self.metrics.render, pages=dashboard.handle if dashboard else None,
                summarise=dashboard.summarise if dashboard else lambda: None))
            self.listener.start()
            stack.callback(self.listener.stop)
            hooks = ", ".join(f"/hooks/{p}" for p in secrets) or "none"
            log.info("listening on %s:%d (webhooks: %s; /healthz; /metrics%s)", self.listener.server.server_address[0],
                     self.listener.port, hooks, "; the dashboard: /" if dashboard else "")
        bare = local_bare_repository(self.config.source.url) if self.settings.watch_local else None
        if bare is not None:
            watcher = RefWatcher(bare, self.config.source.branch, lambda sha: self._pushed(Trigger.PUSH, sha))
            watcher.start()
            stack.callback(watcher.stop)
            log.info("watching %s for pushes to %s", bare, self.config.source.branch)
        poll = f"every {self.settings.poll_interval:g}s" if self.settings.poll_interval else "off"
        drift = self.settings.drift_check_cron or (
            f"every {self.settings.drift_check_interval:g}s" if self.settings.drift_check_interval else "off")
        verify = f"every {self.settings.verify_interval:g}s" if self.settings.verify_interval else "off"
        log.info("watching %s (%s); polling %s; drift checks %s; verify %s",
                 RemoteUrl.parse(self.config.source.url).shown, self.config.source.branch, poll, drift, verify)

    def _lead(self) -> bool:
        """Whether this watch leads now; taking over, it reconciles at once what the last leader left."""
        leading = self.leadership.leading()
        if self.leadership.problem:
            self.health.last_failure = self.leadership.problem
        if self.leadership.shared:
            role = "leader" if leading else "standby"
            self.health.leader = None if leading else self.leadership.leader()
            if leading and self.was != role:
                self.next_poll = time.monotonic()
            elif not leading and self.was != role:
                log.info("standing by: %s; the dashboard here is read-only",
                         self.leadership.problem or f"{self.health.leader or 'another watch'} leads the store")
            self.health.role = self.was = role
        return leading

    def _standby(self) -> str | None:
        """Why this process's dashboard may not act now (None: it may)."""
        if self.health.role != "standby":
            return None
        if self.leadership.problem:
            return f"this watch stands by: {self.leadership.problem}"
        return f"this watch stands by: {self.health.leader or 'another watch'} leads the store; act on its dashboard"

    def _pushed(self, kind: Trigger, sha: str | None) -> None:
        """A push to the branch: the next cycle reconciles it, and a cycle running now stops what it makes stale
        (its checks at once, an apply not yet begun; never an apply under way)."""
        if self.health.running is not None:  # before the trigger, which the next cycle takes (and renews)
            self.cancel.supersede(sha)
        self.triggers.add(kind)

    def _secrets(self) -> dict[Provider, bytes]:
        """Each provider's webhook secret; refused when one shown in clear would also sign for another."""
        files = {Provider(h.provider): (h.secret_file, f"watch.webhooks ({h.provider}) secret_file")
                 for h in self.settings.webhooks}
        if self.settings.webhook_secret_file is not None:
            # the single secret of older configs stays with the providers that only ever sign with it: GitLab
            # would show it in clear to whoever sees its hook, and they could then sign GitHub's
            for provider in (Provider.GITHUB, Provider.GENERIC):
                files.setdefault(provider, (self.settings.webhook_secret_file, "watch.webhook_secret_file"))
            if Provider.GITLAB not in files:
                log.info("watch.webhook_secret_file serves /hooks/github and /hooks/generic; /hooks/gitlab needs a "
                         "secret of its own in watch.webhooks (GitLab sends it in clear)")
        if not files:
            log.warning("no webhook secret is set (watch.webhooks): webhooks are refused (403)")
        secrets = {p: read_secret_file(path, what, Reason.CONFIG_INVALID) for p, (path, what) in files.items()}
        shared = shared_in_clear(secrets)
        if shared is not None:
            shown, other = shared
            raise ControllerError(Reason.CONFIG_INVALID, f"watch.webhooks: {shown}'s secret ({files[shown][0]}) is "
                                  f"also {other}'s ({files[other][0]}): {shown} sends it in clear, so whoever sees "
                                  f"its hooks could sign {other}'s; give each provider a secret of its own")
        return secrets

    def _turn(self) -> None:
        due_apps, next_check = self._drift_due()
        # with checks due, only collect what has already arrived; otherwise sleep until something is due
        deadline = time.monotonic() if due_apps else min(self.next_poll, self.retry_at, next_check, self.next_verify,
                                                         self.window_ends)
        if self.leadership.shared:  # back soon to check the leader lock is still held
            deadline = min(deadline, time.monotonic() + LEADER_CHECK)
        kinds = self.triggers.take(deadline)
        now = time.monotonic()
        if now >= self.next_poll:
            kinds.add(Trigger.POLL)
            self.next_poll = self._after(self.settings.poll_interval)
        if now >= self.retry_at:
            kinds.add(Trigger.RETRY)
        if now >= self.window_ends:
            kinds.add(Trigger.WINDOW)
            self.window_ends = math.inf
        asked, others = self.triggers.asked(), kinds - {Trigger.UI}
        if others:
            trigger = next(k for k in TRIGGER_ORDER if k in others)
            # a retry runs everything again; other triggers only when the branch moved or a check is due (an app
            # asked for on the dashboard among them)
            self._cycle(Request(Mode.SYNC, trigger=trigger, only_if_changed=trigger is not Trigger.RETRY))
        for app in sorted(asked) if not others else ():
            if not self._lead():
                return
            self._cycle(Request(Mode.SYNC, app=app, trigger=Trigger.UI, only_if_changed=True))
        for app in due_apps if self.retry_at == math.inf else ():  # while backing off, the retry comes first
            if self.cancel() or self.triggers.waiting or not self._lead():  # a push first: the next turn fetches it
                return
            self._cycle(Request(Mode.SYNC, app=app, trigger=Trigger.SCHEDULE, fetch=False))
        if not kinds and not due_apps and self.retry_at == math.inf and time.monotonic() >= self.next_verify:
            # one look per host; a full check (and, under policy apply, an apply) only where one differs
            self._cycle(Request(Mode.SYNC, trigger=Trigger.VERIFY, fetch=False, verify_first=True))
            self.next_verify = self._after(self.settings.verify_interval)

    @staticmethod
    def _after(interval: float) -> float:
        """The monotonic time ``interval`` seconds from now; never when it is 0."""
        return time.monotonic() + interval if interval > 0 else math.inf

    def _drift_due(self) -> tuple[list[str], float]:
        """Apps whose scheduled drift check is due now, and the monotonic time of the next one."""
        now, mono = datetime.now(UTC), time.monotonic()
        due, upcoming = [], math.inf
        with self._store() as store:
            active = store.active_apps()
            for app in sorted(self.known_apps & set(active) if self.known_apps else active):
                latest = store.latest(app, full=True)
                if latest is None or latest.finished is None:
                    continue
                when = self.schedule.next_check(parse_time(latest.started))
                if when is None:
                    continue
                if when <= now:
                    due.append(app)
                else:
                    upcoming = min(upcoming, mono + (when - now).total_seconds())
        return due, upcoming

    def _cycle(self, request: Request) -> None:
        self.health.running = request.trigger
        self.health.cycles += 1
        target = request.app or "every app"
        log.info("cycle: %s %s (%s)", request.mode, target, request.trigger)
        if request.fetch:  # it gets whatever was pushed before; one from the cache stays stale for it
            self.cancel.renew()
        try:
            try:
                result = run_cycle(self.config, request, LogProgress(), self.cancel, wait=LOCK_WAIT)
            except ControllerError as error:
                # outside the pipeline (the state store, the lock): not recorded as a run, but retried all the same
                log.error("cycle failed: %s", error.message)
                result = Result(request, None, (AppResult(NO_APP, None, None, failure(error.reason), error.reason,
                                                          error.message),))
            self._settle(result)
        finally:
            # only now: /healthz says idle once the cycle's result is logged and its success or failure recorded
            self.health.running = None

    def _settle(self, result: Result) -> None:
        """Log the result, and schedule a retry with backoff when the cycle failed."""
        if result.idle:
            log.info("%s", result.idle)
        for app in result.apps:
            log.info("%s: %s: %s%s", app.app, app.outcome.value, app.message,
                     f" (run {app.run_id}, {app.seconds:.1f}s)" if app.run_id else "")
        # apps read from gitops.yml have a policy; the drift schedule leaves apps removed from Git alone
        # a held apply runs when its window ends, without waiting for another trigger (an idle cycle says when a
        # hold recorded before, by this daemon before a restart or by a sync from cron, ends)
        for until in [a.held_until for a in result.apps] + [result.held_until]:
            if until:
                ends = time.monotonic() + (parse_time(until) - datetime.now(UTC)).total_seconds() + 1
                self.window_ends = min(self.window_ends, ends)
        names = {a.app for a in result.apps if a.policy}
        if result.request.app is None and names:
            self.known_apps = names
        failed = [a for a in result.apps if a.outcome in (Outcome.FAILED, Outcome.PARTIAL)
                  and a.reason is not Reason.INTERRUPTED]
        if self.cancel():
            return
        if failed and all(a.reason in WAIT_FOR_THE_BRANCH for a in failed):
            # retrying cannot make a refused commit signed, nor a halted rollout healthy: keep the last good
            # revision (drift is healed there), wait for the branch
            self.failures, self.retry_at = 0, math.inf
            self.health.last_failure = f"{failed[0].app}: {failed[0].message}"
            log.warning("revision %s; the last good revision stays applied until the branch moves",
                        "refused" if failed[0].reason is Reason.VERIFICATION_FAILED else "halted")
        elif failed:
            self.failures += 1
            delay = min(self.settings.backoff * 2 ** (self.failures - 1), self.settings.backoff_max)
            self.retry_at = time.monotonic() + delay
            self.health.last_failure = f"{failed[0].app}: {failed[0].message}"
            log.warning("cycle failed (%d in a row); retrying in %.0fs", self.failures, delay)
        else:
            self.failures, self.retry_at = 0, math.inf
            self.health.last_success = time.time()

    def _store(self) -> Store:
        return Store.of(self.config)
