"""Ansible callback: say how each host of a play is reached, as Ansible will reach it.

``controller verify`` talks to the hosts itself, in one ssh round trip; it must use the
address, port, user, key, ssh arguments (a jump host, a proxy) and privilege escalation
Ansible uses, which only Ansible knows after templating inventory, group and host vars, the
play's keywords, ansible.cfg and the environment. One marker line (JSON) per host and run.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ansible import constants as C
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.callback import CallbackBase
from ansible.plugins.loader import connection_loader
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
                self._display.display("\t".join((MARKER, host.name, json.dumps(connection))))


def _connection(play: Any, host: Any) -> dict[str, Any] | None:
    """How ``host`` is reached in ``play``, templated and resolved as Ansible does; None for a host Ansible
    does not reach over ssh (local, containers: verify cannot look there)."""
    variables = play._variable_manager.get_vars(play=play, host=host)
    templar = Templar(loader=play._loader, variables=variables)

    def first(*names: str) -> Any:
        for name in names:
            if variables.get(name) not in (None, ""):
                return templar.template(variables[name])
        return None

    if (first("ansible_connection") or play.connection or "ssh") not in SSH_CONNECTIONS:
        return None
    # the ssh connection plugin's own options as its set_options() resolves them: the templated host vars
    # it reads (ansible_ssh_private_key_file, ansible_ssh_common_args...), the play's keywords, the
    # environment (the job's ANSIBLE_SSH_ARGS, ANSIBLE_PRIVATE_KEY_FILE), ansible.cfg, the plugin's defaults
    connection_loader.get("ssh", class_only=True)  # registers the plugin's option definitions
    names = C.config.get_plugin_vars("connection", "ssh")
    keywords = {k: v for k, v in (("remote_user", play.remote_user), ("port", play.port)) if v is not None}
    options = C.config.get_plugin_options("connection", "ssh", keys=keywords, variables={
        name: templar.template(variables[name]) for name in names if name in variables})
    address = first("ansible_host", "ansible_ssh_host") or host.address or host.name
    port = options.get("port")
    become = first("ansible_become")
    interpreter = str(first("ansible_python_interpreter") or C.config.get_config_value("INTERPRETER_PYTHON"))
    return {
        "address": str(address),
        "port": int(port) if str(port or "").isdigit() else None,
        "user": str(options.get("remote_user") or "") or None,
        "private_key_file": str(options.get("private_key_file") or "") or None,
        "ssh_args": shlex.split(str(options.get("ssh_args") or "")),
        "common_args": [arg for key in ("ssh_common_args", "ssh_extra_args")
                        for arg in shlex.split(str(options.get(key) or ""))],
        "become": boolean(become) if become is not None else bool(play.become),
        "become_user": str(first("ansible_become_user") or play.become_user or "") or None,
        "become_method": str(first("ansible_become_method") or play.become_method or "") or None,
        "python": None if interpreter.startswith("auto") else interpreter,
    }
