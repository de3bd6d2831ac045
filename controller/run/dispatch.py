"""Each app of a reconcile to its run, in order: after the apps it depends on, several at once when they are
independent (``ansible.parallel_apps``, sharing ``ansible.forks``); at the revision a pin or a halt says."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from controller.ansible.runner import import_runner
from controller.config import Config
from controller.errors import ControllerError, Failure
from controller.interrupt import Cancel
from controller.run.app_run import AppRun
from controller.run.preparation import Preparation
from controller.run.results import AppResult, Progress, Request
from controller.source.apps import App
from controller.source.git import Source
from controller.source.revision import Revision
from controller.state.records import Pin, Suspension
from controller.state.store import Store
from controller.vocabulary import Health, HostState, Kind, Outcome, Reason, failure


@dataclass
class Dispatch:
    """What every app's run of one reconcile shares, and the results of the apps done so far."""

    config: Config
    request: Request
    kind: Kind
    source: Source
    prepared: Preparation
    progress: Progress
    cancel: Cancel
    revision: Revision              # the one reconciled (the branch head, a preview's, a rollback's)
    head: Revision                  # the branch head
    suspended: dict[str, Suspension]
    digests: dict[str, str]         # each app's inputs digest (of the revision it is the same as, if any)
    here: dict[str, str]            # each app's inputs digest at this very revision
    unreached: dict[str, str]       # the apps this revision cannot affect, each with the revision it is the same as
    looks: set[str]                 # the apps whose hosts are looked at before any full check
    changes: dict[str, tuple[str, list[str]]]
    pins: dict[str, Pin]            # the apps a rollback pinned (a sync's)
    holding: set[str]               # those the pin still holds at the branch head (holds())
    results: list[AppResult] = field(default_factory=list)

    def all(self, apps: tuple[App, ...], store: Store) -> list[AppResult]:
        """Every app's run, in gitops.yml's order; independent ones ``parallel_apps`` at once."""
        lanes = min(self.config.ansible.parallel_apps, len(apps))
        if lanes > 1:
            self._concurrently(apps, lanes)
        else:
            for app in apps:
                if self.cancel():
                    break
                self.results.append(self.one(app, store))
        return in_order(self.results, apps)

    def _concurrently(self, apps: tuple[App, ...], lanes: int) -> None:
        """Up to ``lanes`` apps at once, each with its share of the forks and a store connection of its own; an app
        starts once the apps of this reconcile it depends on are done."""
        names = {app.name for app in apps}
        pending, running = list(apps), dict[Future[AppResult], App]()
        self.progress.step(f"up to {lanes} apps at once ({', '.join(a.name for a in apps)}, as depends_on allows), "
                           f"each playbook with 1/{lanes} of the forks")

        def alone(app: App) -> AppResult:
            with Store.of(self.config) as store:
                return self.one(app, store, lanes)

        import_runner()
        with ThreadPoolExecutor(lanes, thread_name_prefix="app") as pool:
            try:
                while pending or running:
                    done = {result.app for result in self.results}
                    while pending and len(running) < lanes and not self.cancel():
                        ready = next((a for a in pending if all(d not in names or d in done for d in a.depends_on)),
                                     None)
                        if ready is None:
                            break
                        pending.remove(ready)
                        running[pool.submit(alone, ready)] = ready
                    if not running:
                        break  # stopped: the apps not started are not reconciled
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self.results.append(future.result())
                        running.pop(future)
            except BaseException:
                # a stop, or a failure outside an app's run: the apps under way end first (each records its own
                # run, a stop unwinds them), so that only the apps not reached are recorded as stopped with it
                wait(running)
                self.results.extend(f.result() for f in running if not f.cancelled() and f.exception() is None
                                    and f.result() not in self.results)
                raise

    def one(self, app: App, store: Store, lanes: int = 1) -> AppResult:
        """``app``'s run: at its pin, healing at its last good revision, or at the revision reconciled."""
        request, revision, kind = self.request, self.revision, self.kind
        if newer := self.cancel.superseded(revision.sha):
            return AppResult(app.name, app.policy, None, Outcome.INTERRUPTED, Reason.SUPERSEDED,
                             f"not reconciled at {revision.short}: superseded by {newer}, which is reconciled next",
                             kind=kind)
        if app.name in self.suspended:
            return _suspended(app, self.suspended[app.name])
        # the app's windows as the branch head has them, whichever revision the sync applies
        windows = app.windows if kind is Kind.SYNC else ()
        if (pin := self.pins.get(app.name)) is not None:
            if app.name in self.holding:
                return self._pinned(app, pin, store, replace(self._run(app, store, lanes), windows=windows))
            # the branch moved past the head it was rolled back from: followed again
            moved = f"{self.config.source.branch} moved past {pin.rolled_back_from[:12]}"
            store.unpin(app.name, "controller", f"{moved} to {revision.short}")
            self.progress.notice(f"{app.name}: {moved}, which {app.name} was rolled back from: no longer pinned "
                                 f"at {pin.revision[:12]}")
        if healing := self._healing(app, store, lanes):
            healing[0].windows = windows
            return healing[0].reconcile(self.source, healing[1])
        run = replace(self._run(app, store, lanes), windows=windows, same_as=self.unreached.get(app.name),
                      looks=app.name in self.looks,
                      changed=tuple(self.changes[app.name][1]) if self.changes.get(app.name) else (),
                      # a rollback goes back on purpose, whatever the apps it depends on run
                      waiting=_waiting(app, self.results, store, revision.sha)
                      if kind is Kind.SYNC and not request.rollback else None,
                      rolled_back_from=self.head.sha if request.rollback else None)
        return run.reconcile(self.source, self.prepared)

    def _run(self, app: App, store: Store, lanes: int) -> AppRun:
        return AppRun(app, self.request, self.kind, self.revision, store, self.progress, self.cancel, self.config,
                      self.digests[app.name], self.here[app.name], lanes=lanes)

    def _healing(self, app: App, store: Store, lanes: int) -> tuple[AppRun, Preparation] | None:
        """While the branch head's rollout is halted on ``app``, a sync heals drift at the last good revision
        instead, on the hosts that run it (never a host the halted revision reached): that revision's run, and
        where it runs."""
        request, head = self.request, self.revision.sha
        halt = store.halted(app.name, head) if self.kind is Kind.SYNC and not request.force and not request.limit \
            else None
        hosts = [h.host for h in store.hosts(app.name) if halt and h.revision == halt.last_good]
        if halt is None or halt.last_good is None or not hosts:
            return None
        try:
            good, revision, at = self._stand_in(app, halt.last_good)
        except ControllerError as error:  # then the sync holds the head without healing, and says why
            self.progress.notice(f"{app.name}: drift cannot be healed at {halt.last_good[:12]}: {error}")
            return None
        self.progress.step(f"{app.name}: {head[:12]} is halted; healing drift at {halt.last_good[:12]} on "
                           f"{', '.join(hosts)}")
        digest = at.digests[app.name]
        return replace(self._run(app, store, lanes), app=good, request=replace(request, limit=",".join(hosts)),
                       revision=revision, digest=digest, digest_here=digest, heals=halt), at

    def _pinned(self, app: App, pin: Pin, store: Store, run: AppRun) -> AppResult:
        """A sync of an app a rollback pinned: the pinned revision's run on every host (drift healed there); the
        branch head waits. If that revision cannot run here, the run fails and nothing is applied."""
        running = frozenset(h.revision for h in store.hosts(app.name) if h.revision) - {pin.revision}
        try:
            there, revision, at = self._stand_in(app, pin.revision, running)
        except ControllerError as error:
            return failed_run(store, app.name, self.request, Kind.SYNC, self.revision, ControllerError(
                error.reason, f"app {app.name} is pinned at {pin.revision[:12]}, which cannot run: {error.message}; "
                f"nothing applied (`controller unpin {app.name}` follows the branch again)"))
        self.progress.step(f"{app.name}: pinned at {pin.revision[:12]} by a rollback; {self.revision.short} waits")
        digest = at.digests[app.name]
        return replace(run, app=there, revision=revision, digest=digest, digest_here=digest,
                       looks=self.request.verifying, pinned=pin).reconcile(self.source, at)

    def _stand_in(self, app: App, sha: str,
                  previous: frozenset[str] = frozenset()) -> tuple[App, Revision, Preparation]:
        """``app`` as revision ``sha`` declares it, that revision, and its preparation beside the branch head's."""
        at, apps = self.prepared.at(sha, previous)
        revision = self.source.resolve(sha)
        there = apps.get(app.name)
        if there is None:
            raise ControllerError(Reason.CONFIG_INVALID, f"app {app.name} is not in gitops.yml at {sha[:12]}")
        return there, revision, at


def holds(pin: Pin | None, source: Source, head: str) -> bool:
    """Whether ``pin`` still holds the app at the branch ``head``: until the branch moves past the head it was rolled
    back from (a rewind, a force-push elsewhere, does not let go)."""
    if pin is None:
        return False
    # the head it was rolled back from gone from the cache (a force-push, then a gc) is a rewind too
    return pin.rolled_back_from == head or not (source.has_commit(pin.rolled_back_from)
                                                and source.descends(pin.rolled_back_from, head))


def in_order(results: list[AppResult], apps: tuple[App, ...]) -> list[AppResult]:
    """``results`` in gitops.yml's order (apps at once end in any order); a result of no app listed last."""
    order = {app.name: place for place, app in enumerate(apps)}
    return sorted(results, key=lambda result: order.get(result.app, len(order)))


def _waiting(app: App, done: list[AppResult], store: Store, sha: str) -> str | None:
    """Why ``app`` may not be applied at ``sha`` yet: an app it depends on is not converged and healthy there (as
    this cycle left it, or, not reconciled in it, as the store has its hosts)."""
    results = {result.app: result for result in done}
    for upstream in app.depends_on:
        if (result := results.get(upstream)) is not None:
            if result.revision == sha and result.outcome in (Outcome.CONVERGED, Outcome.IN_SYNC, Outcome.UNVERIFIED) \
                    and not result.reason and not result.unhealthy:
                continue
            why = result.outcome.value + (f", {result.reason}" if result.reason else "") + \
                (", unhealthy" if result.unhealthy else "")
            return f"it depends on {upstream}, which is {why} at {sha[:12]}"
        hosts = store.hosts(upstream)
        if not hosts or any(h.revision != sha or h.state not in (HostState.IN_SYNC, HostState.UNVERIFIED)
                            or h.health is Health.UNHEALTHY for h in hosts):
            return f"it depends on {upstream}, which is not converged and healthy at {sha[:12]}"
    return None


def failed_run(store: Store, app: str, request: Request, kind: Kind, revision: Revision | None,
               error: Failure) -> AppResult:
    """Record a run of ``app`` that ``error`` ended before it began, and its result."""
    run_id = store.start_run(app, revision.sha if revision else None, kind, request.trigger)
    store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
    return AppResult(app, None, run_id, failure(error.reason), error.reason, error.message,
                     previous=store.last_applied(app), revision=revision.sha if revision else None, kind=kind)


def _suspended(app: App, suspension: Suspension) -> AppResult:
    why = f": {suspension.reason}" if suspension.reason else ""
    return AppResult(app.name, app.policy, None, Outcome.SUSPENDED, None,
                     f"suspended since {suspension.since}{why}; not applied (`controller resume {app.name}`)",
                     kind=Kind.SYNC)

