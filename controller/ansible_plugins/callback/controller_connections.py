"""Ansible callback: say how each host of a play is reached, as Ansible will reach it.

``controller verify`` talks to the hosts itself, in one ssh round trip; it must use the
address, port and user Ansible uses, which only Ansible knows after templating inventory,
group and host vars and the play's ``remote_user``. One marker line per host and run.
"""

from __future__ import annotations

from typing import Any

from ansible import constants as C
from ansible.plugins.callback import CallbackBase
from ansible.template import Templar

MARKER = "CONTROLLER-CONNECTION"
SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh")


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "controller_connections"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._told: set[str] = set()

    def v2_playbook_on_play_start(self, play: Any) -> None:
        manager = play._variable_manager
        for host in manager._inventory.get_hosts(play.hosts):
            if host.name in self._told:
                continue
            self._told.add(host.name)
            try:
                connection = _connection(play, host)
            except Exception:  # a host verify cannot reach as Ansible does simply gets no manifest
                continue
            if connection is not None:
                self._display.display("\t".join((MARKER, host.name, *connection)))


def _connection(play: Any, host: Any) -> tuple[str, str, str] | None:
    """Address, port and login user of ``host`` in ``play``, templated as Ansible does ('' when unset);
    None for a host Ansible does not reach over ssh (local, containers: verify cannot look there)."""
    variables = play._variable_manager.get_vars(play=play, host=host)
    templar = Templar(loader=play._loader, variables=variables)

    def first(*names: str) -> str:
        for name in names:
            if variables.get(name) not in (None, ""):
                return str(templar.template(variables[name]))
        return ""

    if (first("ansible_connection") or play.connection or "ssh") not in SSH_CONNECTIONS:
        return None

    address = first("ansible_host", "ansible_ssh_host") or host.address or host.name
    user = first("ansible_user", "ansible_ssh_user") or play.remote_user or \
        C.config.get_config_value("DEFAULT_REMOTE_USER") or ""
    return address, first("ansible_port", "ansible_ssh_port"), user
