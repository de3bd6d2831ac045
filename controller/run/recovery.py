"""Cleaning up after a controller that was killed, as every command does first (the inspection commands too,
which is why this module imports no stage that runs a playbook)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from controller.config import Config
from controller.errors import LockBusy
from controller.secrets.workspace import sweep
from controller.state.locks import reconcile_turn
from controller.state.store import Store


def recover(config: Config, store: Store, locked: bool = False) -> None:
    """Clean up after a controller that was killed: wipe its workspaces, mark its runs interrupted.

    Every command calls this first. Runs are only marked when no run can be in progress:
    under the lock, or when the lock is free right now.
    """
    sweep(Path(config.workspace_dir))
    if locked:
        store.interrupt_unfinished()
        return
    with contextlib.suppress(LockBusy), reconcile_turn(config):
        store.interrupt_unfinished()
