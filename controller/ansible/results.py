"""What a playbook run found, as plain values: each task on each host, each host's recap, how it was reached."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.vocabulary import TaskStatus


@dataclass(frozen=True)
class Connection:
    """How Ansible reached a host (after templating), so that verify reaches it the same way."""

    address: str
    port: int | None = None
    user: str | None = None
    private_key_file: str | None = None
    ssh_args: tuple[str, ...] = ()     # ansible.cfg's ssh_args (the job's), split as Ansible splits them
    common_args: tuple[str, ...] = ()  # ssh_common_args then ssh_extra_args: a jump host, a proxy...
    become: bool = False
    become_user: str | None = None
    become_method: str | None = None
    python: str | None = None          # ansible_python_interpreter, unless discovered

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Connection:
        """A connection as stored or as Ansible told it (fields an older manifest lacks keep their defaults)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "ssh_args": tuple(known.get("ssh_args", ())),
                      "common_args": tuple(known.get("common_args", ()))})


@dataclass(frozen=True)
class TaskResult:
    """One task on one host; ``unverified`` means check mode could not tell (command, no check support)."""

    host: str
    task: str
    action: str
    status: TaskStatus
    diff: str = ""
    message: str = ""
    may_depend: bool = False  # a check-mode failure after a change earlier in the play on the same host
    preexisting: bool = False  # a preview's change that the applied revision's check finds too: drift already there


@dataclass(frozen=True)
class Touched:
    """A task that ran (ok or changed) on a host, and what its result names: paths and resources
    (``manifest.targets_of``)."""

    host: str
    task: str
    action: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class HostSummary:
    """Per-host counts from Ansible's play recap."""

    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class PlayRun:
    """The typed result of one ansible-runner run; ok tasks are counted, not kept."""

    check: bool
    tasks: tuple[TaskResult, ...]
    hosts: tuple[HostSummary, ...]
    touched: tuple[Touched, ...] = ()
    connections: Mapping[str, Connection] | None = None   # how Ansible reached each host
