"""What a person can do from the dashboard: sync an app now (or apply one whose policy is detect), suspend it,
resume it, approve the revision it waits for.

A sync is the CLI's cycle (same lock, same pipeline, recorded with the trigger ``ui``) on a thread of its own:
the listener's loop never waits for a playbook, and a busy lock is an answer at once, not a queue. Applying a
detect app is the CLI's ``sync --apply --app NAME``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from controller.ansible.results import TaskResult
from controller.config import Config
from controller.errors import ControllerError, Interrupted, LockBusy
from controller.interrupt import Cancel
from controller.run.cycle import run_cycle
from controller.run.results import Actor, Progress, Request
from controller.state.store import Store
from controller.vocabulary import Act, Mode, Trigger

log = logging.getLogger("controller")

UNWIND = 80.0  # seconds a stopping daemon waits for a dashboard sync to unwind (systemd allows 90)
STARTED_WAIT = 5.0  # seconds to wait for a sync to take the lock, so a busy lock is said in the answer


class _Started:
    """Progress that also tells the page when the cycle got past the lock (its first step), and calls ``begun``
    then."""

    def __init__(self, inner: Progress, begun: Callable[[], None]) -> None:
        self.inner = inner
        self.begun = begun
        self.event = threading.Event()

    def step(self, message: str) -> None:
        if not self.event.is_set():
            self.event.set()
            self.begun()
        self.inner.step(message)

    def started(self, app: str, phase: str, task: str, host: str) -> None:
        self.inner.started(app, phase, task, host)

    def task(self, app: str, phase: str, result: TaskResult) -> None:
        self.inner.task(app, phase, result)

    def notice(self, message: str) -> None:
        self.inner.notice(message)


class Actions:
    """The dashboard's actions for one process; at most one sync of its own at a time."""

    def __init__(self, config: Config, progress: Progress, acted: Callable[[str], None] = lambda app: None) -> None:
        self.config = config
        self.acted = acted  # an app approved or resumed may have something to apply: a daemon serving us syncs it
        # a flag of its own, set by stop(): the process's Cancel must keep raising in the main thread on SIGTERM,
        # which it would not while this thread's playbook defers signals through it
        self.cancel = Cancel()
        self.progress = progress
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self.running: str | None = None  # the app a dashboard sync is running for

    def sync(self, app: str, who: str, *, apply: bool = False, check: bool = False,
             limit: str | None = None) -> None:
        """Start syncing ``app`` (``apply``: apply it even under policy detect; ``check``: only check it;
        ``limit``: only that host) for ``who``; LockBusy when another run holds the lock. Audited with its run."""
        with self._guard:
            if self.running is not None:
                raise LockBusy(f"a sync of {self.running} started here is still running")
            self.running = app
        refused: list[ControllerError] = []
        act = Act.APPLY if apply else Act.CHECK if check else Act.SYNC
        log.info("ui: %s of %s%s asked by %s", act, app, f" ({limit} only)" if limit else "", who)
        entry: list[int] = []

        def begun() -> None:  # past the lock: a busy lock is no action of anyone's
            with Store.of(self.config) as store:
                entry.append(store.record_act(act, app, who, f"{limit} only" if limit else ""))

        started = _Started(self.progress, begun)

        def work() -> None:
            try:
                request = Request(Mode.CHECK if check else Mode.SYNC, app=app, trigger=Trigger.UI, apply_detect=apply,
                                  limit=limit, by=Actor(who))
                result = run_cycle(self.config, request, started, self.cancel)
                with Store.of(self.config) as store:
                    for done in result.apps:
                        log.info("ui: %s: %s: %s", done.app, done.outcome.value, done.message)
                        if done.run_id is not None and entry:
                            store.link_act(entry[0], done.run_id)
            except ControllerError as error:
                refused.append(error)
                log.warning("ui: sync of %s: %s", app, error.message)
            except Interrupted as stop:  # the daemon is stopping: the sync was unwound
                log.warning("ui: sync of %s: %s", app, stop.message)
            finally:
                self.running = None
                started.event.set()

        self._thread = threading.Thread(target=work, name=f"ui-sync-{app}", daemon=True)
        self._thread.start()
        started.event.wait(STARTED_WAIT)
        if refused:
            raise refused[0]

    def suspend(self, app: str, reason: str, who: str) -> None:
        with Store.of(self.config) as store:
            store.suspend(app, who, reason or "suspended from the dashboard")
        log.info("ui: %s suspended by %s", app, who)

    def approve(self, app: str, revision: str, who: str) -> bool:
        """Approve ``revision``, which the person saw waiting; False when it is not the one that waits (any more)."""
        with Store.of(self.config) as store:
            waiting = store.awaiting_approval(app)
            if waiting is not None and waiting == revision:
                store.approve(app, waiting, who, "approved from the dashboard")
        done = waiting is not None and waiting == revision
        if done:
            self.acted(app)
        log.info("ui: %s: %s by %s", app, f"{revision[:12]} approved" if done else
                 f"approval of {revision[:12]!r} refused: {waiting[:12] if waiting else 'nothing'} waits", who)
        return done

    def resume(self, app: str, who: str) -> None:
        with Store.of(self.config) as store:
            if store.resume(app, who, "resumed from the dashboard"):
                self.acted(app)
        log.info("ui: %s resumed by %s", app, who)

    def stop(self, timeout: float = UNWIND) -> None:
        """Stop a sync in progress (its playbook is stopped, its workspace wiped) and wait for it to unwind."""
        self.cancel.event.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
