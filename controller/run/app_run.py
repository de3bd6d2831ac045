"""One app's run inside a reconcile: check, decide where to apply, apply there, record what happened where."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from controller.ansible.results import Connection, PlayRun, TaskResult
from controller.ansible.runner import OutOfTime, Stopped, run_playbook
from controller.config import Config
from controller.errors import ControllerError, Interrupted, Superseded
from controller.interrupt import Cancel
from controller.run.plan import Plan, plan_apply
from controller.run.preparation import Preparation
from controller.run.results import AppResult, Progress, Request
from controller.source.apps import App
from controller.source.git import Source
from controller.source.revision import Revision
from controller.state.records import HostRecord
from controller.state.store import Store
from controller.verify.drift import Report, decide, host_states, merged, report, settle
from controller.verify.health import HostHealth
from controller.verify.manifest import Verdict
from controller.verify.verdict import check_health, manifests_after, verified_report, verify_hosts
from controller.vocabulary import Health, Kind, Phase, Policy, Reason, TaskStatus, failure

log = logging.getLogger("controller")


@dataclass
class AppRun:
    """The run of ``app`` at ``revision``, recorded in ``store`` as one run of ``kind``."""

    app: App
    request: Request
    kind: Kind
    revision: Revision
    store: Store
    progress: Progress
    cancel: Cancel
    config: Config
    digest: str                     # of everything a host manifest derives from (controller.manifest)
    # the same at this very revision, where ``digest`` is of the one it is the same as (``same_as``)
    digest_here: str
    relook: set[str] = field(default_factory=set)  # hosts whose manifest is made afresh after this run
    # each host's row in the store before this run: the revision applied there, and when
    before: dict[str, HostRecord] = field(default_factory=dict)
    # per host, the tasks check mode cannot verify, as this run's check counted them
    unverifiable: dict[str, int] = field(default_factory=dict)
    # the revision last applied, when the commits since change nothing this app uses (only other apps'
    # inventories): its hosts there are at this revision in all but name, and need no apply for it
    same_as: str | None = None
    changed: tuple[str, ...] = ()  # the files this revision changes since the last applied one
    # hosts are compared with their manifests before any full check: a verify, sync --verify-first, and a
    # sync of a revision that changes nothing this app uses
    looks: bool = False
    # how Ansible reached each host in this run's plays: where the health checks go afterwards
    connections: dict[str, Connection] = field(default_factory=dict)

    @property
    def at_revision(self) -> set[str]:
        """The hosts this revision (or one the same for this app) was applied to before this run: what check
        mode cannot verify ran there."""
        same = {self.revision.sha, self.same_as} - {None}
        return {host for host, row in self.before.items() if row.revision in same}

    def reconcile(self, source: Source, prepared: Preparation) -> AppResult:
        """Check, then (a sync under policy apply) apply where the plan says; failures become the result."""
        if self.request.limit:  # both plays run within it; Ansible's ":&" keeps the app's own limit too
            own = self.app.limit
            self.app = replace(self.app, limit=f"{own}:&{self.request.limit}" if own else self.request.limit)
        app, store = self.app, self.store
        started = time.monotonic()
        self.before = {row.host: row for row in store.hosts(app.name)}
        # a verify only looks at first: a stop then is no run (nothing was under way), so the run starts after
        verdicts = self._look(prepared.space.project) if self.looks else []
        run_id = store.start_run(app.name, self.revision.sha, self.kind, self.request.trigger, app.policy)
        last = store.last_applied(app.name)
        # a detect app is applied only when someone asks for exactly that (sync --apply, the dashboard's Apply)
        applying = self.kind is Kind.SYNC and (app.policy is Policy.APPLY or self.request.apply_detect)
        try:
            if applying:
                self._refuse_rewrite(source, last)

            # a pull request's preview (--revision) tells its change from drift already there; a dry run of
            # the branch head shows what the next sync does, whatever caused it, at the cost of one check
            baseline = self._baseline(prepared, last) if (
                self.kind is Kind.PREVIEW and self.request.revision and last and last != self.revision.sha) else None

            def play(check: bool, limit: str | None = None) -> Report:
                return self._play(run_id, prepared, check=check, limit=limit, baseline=baseline)

            checked = self._check_after(verdicts, play) if self.looks else play(check=True)
            reviewed = self.request.plan
            if applying and reviewed is not None and (differs := reviewed.differs(app.name, checked)):
                raise ControllerError(Reason.PLAN_STALE, f"app {app.name}: the check no longer finds what the "
                                      f"reviewed plan of {reviewed.created} says ({differs}); nothing applied")
            plan = None
            if applying:
                applied_at = {host: self.revision.sha if host in self.at_revision else row.revision
                              for host, row in self.before.items()}
                plan = plan_apply(checked, applied_at, self.revision.sha, force=self.request.force)
            if plan and plan.hosts and (newer := self.cancel.superseded(self.revision.sha)):
                raise Superseded(f"app {app.name}: not applied: superseded by {newer} during the check, which is "
                                 "reconciled next")
            applied = play(check=False, limit=plan.limit) if plan and plan.hosts else None
            outcome, reason = decide(checked, applied)
            health = self._health(prepared, verdicts, checked, applied) if self.kind is not Kind.PREVIEW else {}
            rollout = Rollout.of(applied, self.revision, self.at_revision)
            message = _message(app, checked, applied, rollout, plan, self.kind, verdicts, self._last_run(checked))
            if self.same_as:
                message += (f"; {self.revision.short} changes nothing this app uses since {self.same_as[:12]} "
                            "(only files other apps use): no rollout for it")
            if sick := sorted(h.host for h in health.values() if h.health is Health.UNHEALTHY):
                message += f"; unhealthy: {', '.join(sick)}"
            summary = _summary(checked, applied, rollout, plan, verdicts)
            if health:
                summary["unhealthy"] = [f"{h.host}: {h.detail}" for h in sorted(health.values(), key=_host)
                                        if h.health is Health.UNHEALTHY]
                summary["healthy"] = sorted(h.host for h in health.values() if h.health is Health.HEALTHY)
            store.finish_run(run_id, outcome, reason, message, applied is not None, summary,
                             verified=sum(1 for v in verdicts if v.verified))
            behind, degraded, recovered = 0, list[str](), list[str]()
            if self.kind is not Kind.PREVIEW:  # a preview never becomes the app's (or a host's) state
                converged = [h.host for h in (applied.hosts if applied else ()) if h.status.reached]
                # in sync at a revision the same for this app: at this one now, though nothing ran there
                moved = [h.host for h in checked.hosts if h.status is TaskStatus.OK and h.host in self.at_revision
                         and h.host not in converged] if self.same_as else []
                store.record_hosts(app.name, run_id, host_states(checked, applied), converged, self.revision.sha,
                                   every_host=not self.request.limit, moved=moved)
                if self.same_as:
                    self._restamp()
                degraded, recovered = store.record_health(app.name, health, declared=bool(app.health))
                behind = sum(1 for h in store.hosts(app.name) if h.revision != self.revision.sha)
            return AppResult(app.name, app.policy, run_id, outcome, reason, message, checked, applied, last,
                             self.revision.sha, time.monotonic() - started, self.kind, plan, behind,
                             tuple(verdicts), self.changed, tuple(sorted(health.values(), key=_host)),
                             tuple(degraded), tuple(recovered))
        except (ControllerError, Interrupted) as error:  # a stop too: this is where the run is recorded
            store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
            return AppResult(app.name, app.policy, run_id, failure(error.reason), error.reason, error.message,
                             previous=last, revision=self.revision.sha, seconds=time.monotonic() - started,
                             kind=self.kind)

    def _look(self, project: Path) -> list[Verdict]:
        """Compare the hosts with their manifests, one look each."""
        self.progress.step(f"{self.app.name}: verifying the hosts against their manifests (one look each)")
        states = {row.host: row.state for row in self.store.hosts(self.app.name)}
        verdicts = verify_hosts(self.config, self.store.manifests(self.app.name), states, self.digest, project,
                                self.app.health)
        rechecked = [v.host for v in verdicts if not v.verified]
        # a host that differed is looked at again after its full check, even if Ansible finds it in sync:
        # the manifest then takes what Ansible does not manage (an owner no task sets) as it is now
        self.relook = set(rechecked)
        if not verdicts:
            self.progress.notice(f"{self.app.name}: no host has a manifest yet; a full check of every host "
                                 "records them")
        for verdict in verdicts:
            if not verdict.verified:
                self.progress.notice(f"{self.app.name}: {verdict.host} needs a full check: {verdict.why}")
        return verdicts

    def _health(self, prepared: Preparation, verdicts: list[Verdict], checked: Report,
                applied: Report | None) -> dict[str, HostHealth]:
        """Each host's health after this run: what the verify's look found where nothing was applied since, the
        others in one more round trip each; a host that could not be reached is unknown."""
        checks = self.app.health
        if not checks:
            return {}
        touched = {h.host for h in applied.hosts} if applied else set()
        found = {v.host: v.health for v in verdicts if v.health is not None and v.host not in touched}
        connections = {host: m.connection for host, m in self.store.manifests(self.app.name).items()
                       if m is not None and not m.error}
        connections.update(self.connections)
        ask = {}
        for host in merged(checked, applied).hosts:
            if host.host in found:
                continue
            if host.status is TaskStatus.UNREACHABLE:
                found[host.host] = HostHealth.of(host.host, (), "unreachable: not asked")
            elif host.host not in connections:
                found[host.host] = HostHealth.of(host.host, (), "Ansible does not reach it over ssh: not asked")
            else:
                ask[host.host] = connections[host.host]
        if ask:
            self.progress.step(f"{self.app.name}: health checks on {len(ask)} host(s): "
                               f"{', '.join(str(check) for check in checks)}")
            found.update(check_health(self.config, checks, ask, prepared.space.project))
        if any(not c.passed for h in found.values() for c in h.checks):
            mask = prepared.redactor().text  # a failed command's last line may show what it read
            found = {host: h.redacted(mask) for host, h in found.items()}
        return found

    def _check_after(self, verdicts: list[Verdict], play: Callable[[bool, str | None], Report]) -> Report:
        """Fully check only the hosts that differ from their manifests or have none (every host when no
        manifest is left to read the inputs from, or the inputs changed: hosts may have joined)."""
        rechecked = [v.host for v in verdicts if not v.verified]
        # every full run of the whole inventory writes every host's row, manifest or none, at its inputs,
        # and a limited run happens only at unchanged inputs: one current manifest vouches for the rest
        manifests = [v.manifest for v in verdicts if v.manifest is not None]
        if not manifests or any(m.digest != self.digest for m in manifests):
            return play(True, None)
        full = play(True, ",".join(rechecked)) if rechecked else None
        return verified_report(verdicts, full, self.at_revision)

    def _last_run(self, checked: Report) -> str:
        """Where and when the tasks check mode cannot verify last ran on the hosts where they are settled."""
        stamps = sorted(stamp for h in checked.hosts
                        if h.settled and h.host in self.before and (stamp := self.before[h.host].applied_at))
        if not stamps:
            return ""
        when = _utc(stamps[0]) if stamps[0][:16] == stamps[-1][:16] else f"{_utc(stamps[0])} to {_utc(stamps[-1])}"
        # an app a commit did not reach ran them at the revision it is the same as
        return f"last run at {(self.same_as or self.revision.sha)[:12]} on {when}"

    def _refuse_rewrite(self, source: Source, last: str | None) -> None:
        revision = self.revision
        if last and last != revision.sha and not self.request.allow_rewrite and not source.descends(last, revision.sha):
            raise ControllerError(
                Reason.HISTORY_REWRITTEN,
                f"app {self.app.name}: revision {revision.short} does not descend from the last applied "
                f"{last[:12]} (history rewritten or a rollback); pass --allow-rewrite to apply it")

    def _baseline(self, prepared: Preparation, applied: str) -> Report | None:
        """A preview's check of the revision the app's hosts run now, on its hosts: the drift already there,
        which the pull request does not cause. None (every change is the pull request's) if it cannot run."""
        short = applied[:12]
        try:
            at, apps = prepared.at(applied)
            app = apps.get(self.app.name)
            if app is None:
                return None
            job, redactor = at.ready(app)
            phase = f"check at {short}"
            self.progress.step(f"{app.name}: {phase}, the revision its hosts run, to tell drift already there apart")
            played = run_playbook(app, at.space.project, at.space.runner / Phase.CHECK, job, check=True,
                                  redactor=redactor, cancel=self.cancel,
                                  on_task=lambda task: self.progress.task(app.name, phase, task),
                                  on_start=lambda task, host: self.progress.started(app.name, phase, task, host))
        except ControllerError as error:  # a stop is no error: it ends the preview
            self.progress.notice(f"{self.app.name}: the applied {short} could not be checked ({error}); every "
                                 "change the preview finds is shown as this change's")
            return None
        return report(played)

    def _play(self, run_id: int, prepared: Preparation, *, check: bool, limit: str | None,
              baseline: Report | None = None) -> Report:
        app, phase, space = self.app, Phase.CHECK if check else Phase.APPLY, prepared.space
        job, redactor = prepared.ready(app)
        where = f" on {limit}" if limit else ""
        self.progress.step(f"{app.name}: {phase} ({app.playbook} on {app.inventory}{where})")
        live = LiveTasks(self.store, run_id, phase)

        def task(result: TaskResult) -> None:
            self.progress.task(app.name, phase, result)
            live.add(result)

        def started(name: str, host: str) -> None:
            live.flush()  # the task before it has ended on every host it ran on (linear: in lockstep)
            self.progress.started(app.name, phase, name, host)

        try:
            played = run_playbook(app, space.project, space.runner / phase, job, check=check, redactor=redactor,
                                  cancel=self.cancel, limit=limit, on_task=task, on_start=started,
                                  stale=lambda: self.cancel.superseded(self.revision.sha))
        except (Stopped, OutOfTime) as stopped:
            # what an interrupted apply had already changed is worth keeping
            self.store.add_report(run_id, phase, report(stopped.partial))
            raise
        finally:
            live.flush()
        self.connections.update(played.connections or {})
        found = report(played)
        if check:
            found = settle(found, self.at_revision)
            if baseline is not None:
                found = found.against(baseline)
            self.unverifiable.update({h.host: h.unverified + h.settled for h in found.hosts})
        self.store.add_report(run_id, phase, found)
        if self.kind is not Kind.PREVIEW:
            self._record_manifests(played, found, space.project, every_host=limit is None and not self.request.limit)
        return found

    def _restamp(self) -> None:
        """Manifests taken at the revision this one is the same as (this run's, and those it relied on) vouch
        for this revision too: they take its digest, so that the next commit that does not reach the app is
        compared with them again rather than fully checked."""
        same = {host: replace(m, digest=self.digest_here, revision=self.revision.sha)
                for host, m in self.store.manifests(self.app.name).items() if m is not None and m.digest == self.digest}
        if same:
            self.store.record_manifests(self.app.name, same, every_host=False)

    def _record_manifests(self, played: PlayRun, found: Report, project: Path, *, every_host: bool) -> None:
        # a check's in-sync hosts, an apply's converged ones: what they have now is what Git says
        in_sync = {h.host for h in found.hosts
                   if h.status is TaskStatus.OK or (not played.check and h.status is TaskStatus.CHANGED)}
        previous = {h: m for h, m in self.store.manifests(self.app.name).items() if h not in self.relook}
        manifests = manifests_after(self.config, played, in_sync, self.digest, self.revision.sha, previous,
                                    self.unverifiable, project)
        # an apply only runs where needed: the hosts it skipped keep the check's manifests
        self.store.record_manifests(self.app.name, manifests, every_host=every_host and played.check)


class LiveTasks:
    """A running run's task results for the dashboard, written to the store a task at a time (as the next
    task starts, and at the end): one write per task, not per host. A write that fails (the store locked
    for long, a full disk) is logged once and never stops the playbook, an apply least of all."""

    def __init__(self, store: Store, run_id: int, phase: Phase) -> None:
        self.store, self.run_id, self.phase = store, run_id, phase
        self.pending: list[TaskResult] = []
        self.broken = False

    def add(self, result: TaskResult) -> None:
        self.pending.append(result)

    def flush(self) -> None:
        if not self.pending or self.broken:
            return
        try:
            self.store.add_live(self.run_id, self.phase, self.pending)
        except sqlite3.Error as error:
            self.broken = True
            log.warning("run %d: the dashboard will not follow this %s task by task: %s", self.run_id, self.phase,
                        error)
        self.pending = []


@dataclass(frozen=True)
class Rollout:
    """What an apply changed, told apart: hosts the revision was new to got a rollout; hosts already at it
    had drifted, and got their drift corrected."""

    revision: str  # short
    rolled_out: list[str]
    corrected: list[str]

    @classmethod
    def of(cls, applied: Report | None, revision: Revision, at_revision: set[str]) -> Rollout:
        changed = applied.with_status(TaskStatus.CHANGED) if applied is not None else []
        return cls(revision.short, [h for h in changed if h not in at_revision],
                   [h for h in changed if h in at_revision])


def _message(app: App, checked: Report, applied: Report | None, rollout: Rollout, plan: Plan | None, kind: Kind,
             verdicts: list[Verdict], last_run: str) -> str:
    parts = []
    if applied is not None and app.policy is Policy.DETECT:
        parts.append("policy detect: applied on request")
    verified = [v for v in verdicts if v.verified]
    if verified:
        covered = sum(v.manifest.covered for v in verified if v.manifest)
        parts.append(f"{len(verified)} host(s) verified against their manifests ({covered} task results covered)")
    rechecked = [v.host for v in verdicts if not v.verified]
    if rechecked:
        parts.append(f"fully checked: {', '.join(rechecked)}")
    if applied is not None:
        if rollout.rolled_out:
            parts.append(f"rolled out {rollout.revision} to {', '.join(rollout.rolled_out)}")
        if rollout.corrected:
            parts.append(f"corrected drift on {', '.join(rollout.corrected)}")
        if plan is not None and not plan.every_host:
            parts.append(f"applied to {', '.join(plan.hosts)} only")
    elif checked.drifted:
        parts.append(f"drifted: {', '.join(checked.with_status(TaskStatus.CHANGED))}")
        if any(t.preexisting for t in checked.tasks):
            parts.append(f"already drifted at the applied revision: {', '.join(checked.caused(preexisting=True))}")
        why = {Kind.PREVIEW: "preview", Kind.CHECK: "check only", Kind.VERIFY: "verify only"}.get(kind, "policy detect")
        parts.append(f"not applied ({why})")
    if plan is not None and plan.left_out:
        parts.append(f"not applied to {', '.join(sorted(plan.left_out))}: unreachable in the check, not dialled again")
    final = merged(checked, applied)
    for status in (TaskStatus.FAILED, TaskStatus.UNREACHABLE):
        hosts = sorted(final.with_status(status))
        if hosts:
            parts.append(f"{status}: {', '.join(hosts)}")
    unverified = sum(h.unverified for h in checked.hosts)
    if applied is None and unverified and not checked.drifted:
        parts.append(f"{unverified} task(s) check mode cannot verify")
    if not parts:
        parts.append(f"{len(checked.hosts)} host(s) in sync")
    settled = sum(h.settled for h in checked.hosts if h.status is TaskStatus.OK)
    if settled and last_run and not checked.drifted:
        parts.append(f"{settled} task(s) check mode cannot verify, {last_run}")
    return "; ".join(parts)


def _host(health: HostHealth) -> str:
    return health.host


def _utc(stamp: str) -> str:
    """``2026-11-23T10:42:05+00:00`` (as stored) as ``2026-11-23 10:42 UTC``."""
    return f"{stamp[:16].replace('T', ' ')} UTC"


def _summary(checked: Report, applied: Report | None, rollout: Rollout, plan: Plan | None,
             verdicts: list[Verdict]) -> dict[str, list[str]]:
    summary = {"drifted": checked.with_status(TaskStatus.CHANGED)}
    if any(t.preexisting for t in checked.tasks):  # a preview: the drift it found that the revision does not cause
        summary["already_drifted"] = checked.caused(preexisting=True)
    if verdicts:
        summary["verified"] = [v.host for v in verdicts if v.verified]
        summary["rechecked"] = [f"{v.host}: {v.why}" for v in verdicts if not v.verified]
    if applied is not None:
        summary["rolled_out"] = rollout.rolled_out
        summary["corrected"] = rollout.corrected
        summary["applied_to"] = plan.hosts if plan else []
    final = merged(checked, applied)
    for status in (TaskStatus.FAILED, TaskStatus.UNREACHABLE):
        summary[status] = sorted(final.with_status(status))
    return summary
