"""What a run found, per host: the drift report of a check, the convergence of an apply."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from controller.ansible.results import PlayRun, TaskResult
from controller.vocabulary import HostState, Outcome, Reason, TaskStatus


@dataclass(frozen=True)
class HostReport:
    """One host after a run: ``changed`` means drifted (check) or corrected (apply).

    Of the tasks check mode cannot verify, ``unverified`` are pending there (the revision was not
    applied to the host yet); ``settled`` already ran when it was, and are no open item.
    """

    host: str
    status: TaskStatus  # ok | changed | failed | unreachable
    changed: int
    unverified: int
    settled: int = 0


@dataclass(frozen=True)
class Report:
    """Per-host states and the tasks worth showing (changed, failed, unreachable, unverified)."""

    hosts: tuple[HostReport, ...]
    tasks: tuple[TaskResult, ...]

    def with_status(self, status: TaskStatus) -> list[str]:
        """The hosts in ``status``."""
        return [h.host for h in self.hosts if h.status is status]

    @property
    def drifted(self) -> bool:
        return any(h.status is TaskStatus.CHANGED for h in self.hosts)

    def caused(self, preexisting: bool) -> list[str]:
        """Hosts with a change of a preview that is (``preexisting``) or is not drift already on them."""
        found = {t.host for t in self.tasks if t.status is TaskStatus.CHANGED and t.preexisting is preexisting}
        return [h.host for h in self.hosts if h.host in found]

    def against(self, baseline: Report) -> Report:
        """This preview's changes, those the applied revision's own check (``baseline``) finds on the same host
        with the same diff marked preexisting: the pull request does not cause them."""
        there = {(t.host, t.task, t.diff) for t in baseline.tasks if t.status is TaskStatus.CHANGED}
        return replace(self, tasks=tuple(
            replace(t, preexisting=True) if t.status is TaskStatus.CHANGED and (t.host, t.task, t.diff) in there
            else t for t in self.tasks))

    @property
    def broken(self) -> Reason | None:
        """Why some hosts could not be checked or converged, if any could not."""
        if self.with_status(TaskStatus.UNREACHABLE):
            return Reason.HOST_UNREACHABLE
        if self.with_status(TaskStatus.FAILED):
            return Reason.TASK_FAILED
        return None


def report(run: PlayRun) -> Report:
    """Summarise a PlayRun per host.

    A host whose only check-mode failures came after a change earlier in the same play is drifted,
    not failed: those failures may only follow from what the apply would change first.
    """
    unverified: dict[str, int] = {}
    explained: dict[str, int] = {}
    cut_off: set[str] = set()  # timed out or refused for its host key: reported as a failed task by Ansible
    for task in run.tasks:
        if task.status is TaskStatus.UNVERIFIED:
            unverified[task.host] = unverified.get(task.host, 0) + 1
        elif task.status is TaskStatus.UNREACHABLE:
            cut_off.add(task.host)
        elif task.may_depend:
            explained[task.host] = explained.get(task.host, 0) + 1
    hosts = []
    for summary in run.hosts:
        if summary.unreachable or summary.host in cut_off:
            status = TaskStatus.UNREACHABLE
        elif summary.failed > explained.get(summary.host, 0):
            status = TaskStatus.FAILED
        elif summary.changed or summary.failed:  # every failure explained: what the apply would change first
            status = TaskStatus.CHANGED
        else:
            status = TaskStatus.OK
        hosts.append(HostReport(summary.host, status, summary.changed, unverified.get(summary.host, 0)))
    return Report(tuple(hosts), run.tasks)


def settle(found: Report, at_revision: Collection[str]) -> Report:
    """``found`` with the tasks check mode cannot verify left open only where they are pending: on a host
    in ``at_revision`` (the revision checked was applied there), they ran when it was applied."""
    hosts = tuple(replace(h, unverified=0, settled=h.settled + h.unverified) if h.host in at_revision else h
                  for h in found.hosts)
    tasks = tuple(t for t in found.tasks if t.status is not TaskStatus.UNVERIFIED or t.host not in at_revision)
    return Report(hosts, tasks)


def decide(check: Report, applied: Report | None) -> tuple[Outcome, Reason | None]:
    """The app's outcome: each host as the apply left it, or as the check found it where no apply ran."""
    final = merged(check, applied)
    if final.broken:
        return Outcome.PARTIAL, final.broken
    if applied is None and check.drifted:
        return Outcome.DRIFTED, None
    ran = {h.host for h in applied.hosts} if applied else set()
    if any(h.unverified for h in check.hosts if h.host not in ran):  # an apply ran those tasks where it ran
        return Outcome.UNVERIFIED, None
    return (Outcome.CONVERGED, None) if applied is not None else (Outcome.IN_SYNC, None)


def merged(check: Report, applied: Report | None) -> Report:
    """Per host, the apply's result where it ran on that host, else the check's."""
    if applied is None:
        return check
    ran = {h.host for h in applied.hosts}
    return Report(tuple([*applied.hosts, *(h for h in check.hosts if h.host not in ran)]),
                  tuple([*applied.tasks, *(t for t in check.tasks if t.host not in ran)]))


def host_states(check: Report, applied: Report | None) -> dict[str, HostState]:
    """Each host's state for the state store."""
    ran = {h.host for h in applied.hosts} if applied else set()
    states = {}
    for host in merged(check, applied).hosts:
        if host.status.broken:
            states[host.host] = HostState(host.status.value)  # failed | unreachable: the same word
        elif host.host in ran:
            states[host.host] = HostState.IN_SYNC  # the apply converged it (its "changed" is the correction)
        elif host.status is TaskStatus.CHANGED:
            states[host.host] = HostState.DRIFTED
        else:
            states[host.host] = HostState.UNVERIFIED if host.unverified else HostState.IN_SYNC
    return states
