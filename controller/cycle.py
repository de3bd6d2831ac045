"""One reconcile cycle as every entry point runs it: lock, pipeline, record, announce."""

from __future__ import annotations

from controller.config import Config
from controller.interrupt import Cancel
from controller.lock import hold
from controller.notify import announce
from controller.reconcile import Progress, Request, Result, reconcile
from controller.state import Store


def run_cycle(config: Config, request: Request, progress: Progress, cancel: Cancel, wait: float = 0) -> Result:
    """Hold the lock (waiting up to ``wait`` s), reconcile, and notify what changed."""
    with hold(config.state_path / "controller.lock", wait), Store(config.state_path / "state.db") as store:
        result = reconcile(config, request, store, progress, cancel)
        announce(config.notify, store, result)
    return result
