"""Ansible callback: mark tasks that check mode skipped instead of verifying.

ansible-runner's skip events carry no result, so a ``command`` task skipped by check
mode looks like one skipped by ``when``. This prints one marker line per such task,
which reaches the controller in the same event stream. A task written with
``changed_when: false`` is its author's word that it changes nothing: it is marked as such.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.callback import CallbackBase

MARKER = "CONTROLLER-UNVERIFIED"
CHANGES_NOTHING = "changes-nothing"


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "controller_unverified"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_skipped(self, result: Any) -> None:
        if "check mode" in str(result._result.get("msg", "")):
            said = CHANGES_NOTHING if _changes_nothing(result._task) else ""
            self._display.display(f"{MARKER}\t{result._host.get_name()}\t{result._task._uuid}\t{said}")


def _changes_nothing(task: Any) -> bool:
    """``changed_when: false`` as written (a literal, not a template that happens to be false)."""
    conditions = task.changed_when if isinstance(task.changed_when, list) else [task.changed_when]
    return len(conditions) == 1 and str(conditions[0]).strip().lower() == "false"
