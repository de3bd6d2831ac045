"""Ansible callback: mark tasks that check mode skipped instead of verifying.

ansible-runner's skip events carry no result, so a ``command`` task skipped by check
mode looks like one skipped by ``when``. This prints one marker line per such task,
which reaches the controller in the same event stream.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.callback import CallbackBase

MARKER = "CONTROLLER-UNVERIFIED"


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "controller_unverified"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_skipped(self, result: Any) -> None:
        if "check mode" in str(result._result.get("msg", "")):
            self._display.display(f"{MARKER}\t{result._host.get_name()}\t{result._task._uuid}")
