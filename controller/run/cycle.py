"""One reconcile cycle as every entry point runs it: lock, pipeline, record, announce."""

from __future__ import annotations

from controller.config import Config
from controller.interrupt import Cancel
from controller.process import stop_children
from controller.run.forges import post_statuses
from controller.run.notify import announce
from controller.run.reconcile import reconcile
from controller.run.recovery import recover
from controller.run.results import Progress, Request, Result
from controller.state.locks import reconcile_turn
from controller.state.store import Store


def run_cycle(config: Config, request: Request, progress: Progress, cancel: Cancel, wait: float = 0) -> Result:
    """Hold the lock (waiting up to ``wait`` s), reconcile, notify what changed and tell the forges."""
    with reconcile_turn(config, wait), Store.of(config) as store:
        recover(config, store, locked=True)
        try:
            result = reconcile(config, request, store, progress, cancel)
        finally:
            stop_children()  # a tool whose start a signal interrupted (a git fetch) must not outlive the run
        announce(config, store, result)
        post_statuses(config, store, result)
    return result
