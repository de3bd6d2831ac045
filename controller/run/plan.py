"""When to apply, and where: the one rule, in one place.

Under policy ``apply``, a sync applies to a host when the revision is new for that host (it
missed a rollout, or the branch moved), or the check found a change or a failure there
(a failure in check mode is often only a later task depending on an earlier one's change).
Only those hosts are applied to: a drift on one host of fifty converges that host. A host the
check could not reach is left out, whatever else holds (a new revision, --force): dialling it
again would cost another connect or task timeout, under the lock, for an answer the check just
gave. It stays behind, and the next run tries it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.verify.drift import Report
from controller.vocabulary import ApplyReason, TaskStatus


@dataclass(frozen=True)
class Plan:
    """The hosts an apply runs on, and why each; no hosts: no apply."""

    why: dict[str, ApplyReason]
    every_host: bool             # True: no --limit needed
    left_out: dict[str, str] = field(default_factory=dict)  # host -> why it is not applied to: unreachable

    @property
    def hosts(self) -> list[str]:
        return sorted(self.why)

    @property
    def limit(self) -> str | None:
        """Ansible's --limit for exactly these hosts, or None for the whole inventory."""
        return None if self.every_host else ",".join(self.hosts)

    def only(self, hosts: set[str]) -> tuple[Plan | None, list[str]]:
        """This plan kept to ``hosts`` (None: it applies to none of them), and the hosts held back."""
        kept = {host: why for host, why in self.why.items() if host in hosts}
        held = sorted(host for host in self.why if host not in kept)
        if not held:
            return self, []
        return (Plan(kept, every_host=False, left_out=self.left_out) if kept else None), held


def plan_apply(check: Report, applied: Mapping[str, str | None], revision: str, force: bool = False) -> Plan:
    """Which hosts of a checked app need the apply; ``applied`` is each host's last applied revision."""
    why: dict[str, ApplyReason] = {}
    left_out: dict[str, str] = {}
    for host in check.hosts:
        if host.status is TaskStatus.UNREACHABLE:
            left_out[host.host] = "unreachable in the check"
        elif force:
            why[host.host] = ApplyReason.FORCED
        elif applied.get(host.host) != revision:
            why[host.host] = ApplyReason.NEW_REVISION
        elif host.status is TaskStatus.CHANGED:
            why[host.host] = ApplyReason.DRIFTED
        elif host.status is TaskStatus.FAILED:
            why[host.host] = ApplyReason.FAILED_IN_CHECK
    return Plan(why, every_host=bool(why) and len(why) == len(check.hosts), left_out=left_out)
