"""One app's run inside a reconcile: check, decide where to apply, apply there, record what happened where."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from controller.ansible.job import Job
from controller.ansible.results import Connection, PlayRun, TaskResult
from controller.ansible.runner import OutOfTime, Playbook, Stopped, run_playbook
from controller.config import Config
from controller.errors import ControllerError, Interrupted, Superseded
from controller.interrupt import Cancel
from controller.run.plan import Plan, plan_apply
from controller.run.preparation import Preparation
from controller.run.results import Actor, AppResult, Gates, Progress, Request
from controller.run.rollout import Staged, roll_out
from controller.run.windows import closed
from controller.source.apps import App, Window
from controller.source.git import Source
from controller.source.revision import Revision
from controller.state.database import StoreError
from controller.state.records import Halt, HostRecord, Pin
from controller.state.store import Store
from controller.verify.drift import Report, decide, host_states, merged, report, settle
from controller.verify.health import HostHealth
from controller.verify.manifest import Verdict
from controller.verify.verdict import check_health, manifests_after, verified_report, verify_hosts
from controller.vocabulary import Act, Health, HostState, Kind, Outcome, Phase, Policy, Reason, TaskStatus, failure

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
    # why the app may not be applied yet (depends_on: an app it needs is not converged and healthy at this revision)
    waiting: str | None = None
    # the halt of the branch head this run stands in for: it heals drift at the halt's last good revision
    heals: Halt | None = None
    # the app's maintenance windows (gitops.yml windows:, as the branch head has them): asked when it comes to apply
    windows: tuple[Window, ...] = ()
    # each host's health as the rollout found it after its batch (or its rollback): no need to ask again
    batch_health: dict[str, HostHealth] = field(default_factory=dict)
    # `controller rollback` pinned the app at this revision: drift is healed here, and the branch head waits
    pinned: Pin | None = None
    # this is a rollback (`controller rollback`) from the branch head it names: pinned here once it has run
    rolled_back_from: str | None = None
    # how many apps may run at once beside it (ansible.parallel_apps): each playbook gets that share of the forks
    lanes: int = 1
    # the playbook at this revision, its check and applies run as passes of one process (ended with the run)
    playbook: Playbook | None = None

    @property
    def at_revision(self) -> set[str]:
        """The hosts this revision (or one the same for this app) was applied to before this run: what check
        mode cannot verify ran there."""
        same = {self.revision.sha, self.same_as} - {None}
        return {host for host, row in self.before.items() if row.revision in same}

    def reconcile(self, source: Source, prepared: Preparation) -> AppResult:
        """Check, then (a sync under policy apply) apply where the plan says; failures become the result."""
        try:
            return self._reconcile(source, prepared)
        finally:
            if self.playbook is not None:
                self.playbook.close()

    def _reconcile(self, source: Source, prepared: Preparation) -> AppResult:
        if self.request.limit:  # both plays run within it; Ansible's ":&" keeps the app's own limit too
            own = self.app.limit
            self.app = replace(self.app, limit=f"{own}:&{self.request.limit}" if own else self.request.limit)
        app, store = self.app, self.store
        started = time.monotonic()
        self.before = {row.host: row for row in store.hosts(app.name)}
        # a verify only looks at first: a stop then is no run (nothing was under way), so the run starts after
        verdicts = self._look(prepared.space.project) if self.looks else []
        run_id = store.start_run(app.name, self.revision.sha, self.kind, self.request.trigger, app.policy)
        if self.rolled_back_from:  # who asked is known before anything is applied, whatever becomes of it
            store.record_act(Act.ROLLBACK, app.name, self._by.who, self._by.reason, revision=self.revision.sha,
                             run_id=run_id)
        last = store.last_applied(app.name)
        # a detect app is applied only when someone asks for exactly that (sync --apply, the dashboard's Apply)
        applying = self.kind is Kind.SYNC and (app.policy is Policy.APPLY or self.request.apply_detect)
        try:
            # the last good revision is an ancestor of the halted head; a rollback goes back on purpose
            if applying and self.heals is None and self.pinned is None and self.rolled_back_from is None:
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
            gates = self._gates(checked) if self.kind is Kind.PREVIEW else None
            # a revision whose rollout halted is not applied again until the branch moves (or on purpose: --force)
            standing = store.halted(app.name, self.revision.sha) if self.kind is not Kind.PREVIEW else None
            # (a rollback to it is on purpose too)
            held = standing if applying and not self.request.force and not self.rolled_back_from else None
            if applying and held is None:
                plan = plan_apply(checked, self._applied_at(), self.revision.sha, force=self.request.force)
            waited = plan if plan and plan.hosts and self.waiting else None
            if waited:
                plan = None
            # a new revision of an app that needs approval waits for one that names it; drift at one applied does not
            # (as gitops.yml says at this revision, or said at the last one applied: a commit that drops the
            # requirement needs an approval too)
            # (a rollback, and the pin it makes, are a person's decision already)
            needs = (app.needs_approval or store.requires_approval(app.name)) and not self.on_purpose
            approved = store.approval(app.name, self.revision.sha) if needs else None
            # correcting drift where this revision already runs is healing, not a new revision
            running_it = {host for host, sha in self._applied_at().items() if sha == self.revision.sha}
            awaiting: list[str] = []
            if plan and plan.hosts and needs and approved is None:
                plan, awaiting = plan.only(running_it)
            # asked now, after the check: a window that opened while it ran holds the apply
            window = closed(self.windows, datetime.now(UTC)) if plan and plan.hosts and self.windows else None
            overriding = self.request.override_window or self.rolled_back_from is not None
            shut = window if not overriding else None
            kept_out: list[str] = []
            if shut and plan:
                plan, kept_out = plan.only(running_it if app.heals_while_held else set())
            if plan and plan.hosts and (newer := self.cancel.superseded(self.revision.sha)):
                raise Superseded(f"app {app.name}: not applied: superseded by {newer} during the check, which is "
                                 "reconciled next")
            if window and plan and plan.hosts and self.request.override_window:  # recorded before it applies
                store.record_act(Act.OVERRIDE_WINDOW, app.name, self._by.who, self._by.reason,
                                 revision=self.revision.sha, run_id=run_id)
            staged = roll_out(app, plan.hosts, plan.limit, lambda limit: play(False, limit),
                              lambda hosts: self._batch_health(prepared, app, hosts, prepared.space.project),
                              lambda hosts, into: self._rollback(run_id, prepared, hosts, into),
                              lambda now, told: self._rolling(run_id, now, told)) if plan and plan.hosts else None
            applied = staged.applied if staged else None
            outcome, reason = decide(checked, applied)
            halted = staged is not None and staged.halted
            if halted:
                outcome, reason = Outcome.FAILED, Reason.HEALTH_CHECK_FAILED
                # the plan's hosts after the halt were never applied to
                assert plan is not None and staged is not None
                plan = replace(plan, why={h.host: plan.why[h.host] for h in staged.applied.hosts})
            elif (held or self.heals) and not outcome.troubled:  # not in sync with the branch head: it is halted
                outcome, reason = Outcome.DRIFTED, Reason.HEALTH_CHECK_FAILED
            elif self.pinned and not outcome.troubled:  # the branch head waits for the pin to go
                outcome, reason = Outcome.HELD, Reason.PINNED
            elif waited and not outcome.troubled:  # held back with hosts to apply to: left as they differ
                outcome, reason = Outcome.DRIFTED, Reason.DEPENDENCY_NOT_READY
            elif (awaiting or kept_out) and not outcome.troubled:
                outcome, reason = Outcome.HELD, Reason.APPROVAL_REQUIRED if awaiting else Reason.WINDOW_CLOSED
            health = self._health(prepared, verdicts, checked, applied) if self.kind is not Kind.PREVIEW else {}
            rolled_back = staged.rolled_back if staged else {}
            rollout = Rollout.of(applied, self.revision, self.at_revision, rolled_back)
            message = _message(app, checked, applied, rollout, plan, self.kind, verdicts, self._last_run(checked))
            if staged and staged.story():
                message += f"; {staged.story()}"
            if waited:
                message += f"; not applied to {', '.join(waited.hosts)}: {self.waiting}"
            if awaiting:
                message += (f"; {self.revision.short} waits for approval: not applied to {', '.join(awaiting)} "
                            f"(controller approve {app.name} {self.revision.short})")
            if kept_out and shut:
                message += f"; {shut}: not applied to {', '.join(kept_out)} (sync --override-window applies now)"
            elif window and applied is not None and overriding:
                message += f"; applied inside window {window.window} ({self._overridden_by})"
            if halt := held or self.heals:
                healing = f"drift healed at {self.revision.short}, the last good revision, while " if self.heals else ""
                message += (f"; {healing}{halt.revision[:12]} halted in run #{halt.run_id} ({halt.detail}): not "
                            "applied again until the branch moves (sync --force retries it)")
            message += self._pin_story(halted)
            if self.same_as:
                message += (f"; {self.revision.short} changes nothing this app uses since {self.same_as[:12]} "
                            "(only files other apps use): no rollout for it")
            if sick := sorted(h.host for h in health.values() if h.health is Health.UNHEALTHY):
                message += f"; unhealthy: {', '.join(sick)}"
            summary: dict[str, object] = {**_summary(checked, applied, rollout, plan, verdicts)}
            if staged and app.rollout is not None:
                summary["rollout"] = staged.summary()
            if awaiting:
                summary["approval"] = {"waiting": awaiting}
            elif approved and applied is not None:
                summary["approval"] = {"who": approved.who, "at": approved.at, "reason": approved.reason}
            if kept_out and shut:
                summary["window"] = {"window": str(shut.window), "until": shut.until.isoformat(), "held": kept_out}
            elif window and applied is not None and overriding:
                summary["window"] = {"window": str(window.window), "overridden": True}
            if self.pinned:
                summary["pin"] = asdict(self.pinned)
            by = self._by
            if self.rolled_back_from:
                summary["rollback"] = {"from": self.rolled_back_from, "who": by.who, "reason": by.reason}
            if health:
                summary["unhealthy"] = [f"{h.host}: {h.detail}" for h in sorted(health.values(), key=_host)
                                        if h.health is Health.UNHEALTHY]
                summary["healthy"] = sorted(h.host for h in health.values() if h.health is Health.HEALTHY)
            store.finish_run(run_id, outcome, reason, message, applied is not None, summary,
                             verified=sum(1 for v in verdicts if v.verified))
            behind, degraded, recovered = 0, list[str](), list[str]()
            if self.kind is not Kind.PREVIEW:  # a preview never becomes the app's (or a host's) state
                mixed = staged.mixed if staged else set()
                converged = [h.host for h in (applied.hosts if applied else ()) if h.status.reached
                             and h.host not in rolled_back and h.host not in mixed]
                # in sync at a revision the same for this app: at this one now, though nothing ran there
                moved = [h.host for h in checked.hosts if h.status is TaskStatus.OK and h.host in self.at_revision
                         and h.host not in converged] if self.same_as else []
                # a host put back differs from the branch head again, as the check found it
                # and one whose rollback failed part way is neither revision
                states = {**host_states(checked, applied), **dict.fromkeys(rolled_back, HostState.DRIFTED),
                          **dict.fromkeys(mixed, HostState.FAILED)}
                store.record_hosts(app.name, run_id, states, converged, self.revision.sha,
                                   every_host=not self.request.limit, moved=moved)
                if rolled_back or mixed:  # their manifests were taken at this revision, which they no longer run
                    store.record_manifests(app.name, dict.fromkeys([*rolled_back, *mixed]), every_host=False)
                if halted and staged is not None:
                    store.halt(app.name, self.revision.sha, run_id, standing.last_good if standing else
                               self._last_good(), staged.detail)
                elif self.kind is Kind.SYNC and not held and not self.heals and not outcome.troubled \
                        and outcome is not Outcome.HELD and not self.rolled_back_from:
                    # a revision after the halted one went through: they are history (a rollback went back to an
                    # older one: the head it left stays halted)
                    store.clear_halts(app.name)
                if self.rolled_back_from and not halted:
                    store.pin(app.name, self.revision.sha, self.rolled_back_from, run_id, by.who, by.reason)
                if self.same_as:
                    self._restamp()
                if self.kind is Kind.SYNC and applied is not None and not self.heals and not awaiting:
                    store.require_approval(app.name, app.needs_approval)
                # a heal runs the last good revision's app, which may have no checks yet: it forgets none
                degraded, recovered = store.record_health(app.name, health,
                                                          declared=bool(app.health) or self.heals is not None)
                behind = sum(1 for h in store.hosts(app.name) if h.revision != self.revision.sha)
            return AppResult(app.name, app.policy, run_id, outcome, reason, message, checked, applied, last,
                             self.revision.sha, time.monotonic() - started, self.kind, plan, behind,
                             tuple(verdicts), self.changed, tuple(sorted(health.values(), key=_host)),
                             tuple(degraded), tuple(recovered), gates,
                             halted=self.revision.sha if halted or standing else
                             self.heals.revision if self.heals else None,
                             held_until=shut.until.isoformat() if kept_out and shut else None)
        except (ControllerError, Interrupted) as error:  # a stop too: this is where the run is recorded
            store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
            return AppResult(app.name, app.policy, run_id, failure(error.reason), error.reason, error.message,
                             previous=last, revision=self.revision.sha, seconds=time.monotonic() - started,
                             kind=self.kind)

    def _shared(self, job: Job) -> Job:
        """The job as this app runs it beside others (ansible.parallel_apps): its share of the forks, and ssh
        master connections of its own (another app's playbook ending would close shared ones under it)."""
        if self.lanes == 1:
            return job
        masters = Path(job.env["ANSIBLE_SSH_CONTROL_PATH_DIR"])
        own = masters.with_name(f"{masters.name}-{hashlib.sha256(self.app.name.encode()).hexdigest()[:12]}")
        own.mkdir(mode=0o700, exist_ok=True)
        return replace(job, args=(*job.args, "--forks", str(max(1, job.forks // self.lanes))),
                       env={**job.env, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(own)})

    def _private(self, runner: Path) -> Path:
        """ansible-runner's directory for this app: its own beside other apps (ansible-runner creates a job's
        artifact directories unlocked, so two playbooks starting at once in one of them race)."""
        return runner if self.lanes == 1 else runner / self.app.name

    @property
    def on_purpose(self) -> bool:
        """A rollback, or a sync of what one pinned: a person chose this revision for the app."""
        return self.pinned is not None or self.rolled_back_from is not None

    @property
    def _by(self) -> Actor:
        """Who asked for this run, for the audit trail (a rollback or an override always says)."""
        return self.request.by or Actor("unknown")

    @property
    def _overridden_by(self) -> str:
        return "a rollback" if self.rolled_back_from else "--override-window"

    def _pin_story(self, halted: bool) -> str:
        """What the message says of a rollback (``halted``: its rollout halted, so nothing is pinned), or of a pin
        the run stayed at."""
        name, short = self.app.name, self.revision.short
        if self.pinned:
            pin = self.pinned
            why = f": {pin.reason}" if pin.reason else ""
            return (f"; pinned at {short} by {pin.by} at {pin.at}{why}: {pin.rolled_back_from[:12]} waits until the "
                    f"branch moves past it or `controller unpin {name}`")
        if self.rolled_back_from:
            who, why = self._by.who, f": {self._by.reason}" if self._by.reason else ""
            if halted:
                return f"; the rollback from {self.rolled_back_from[:12]} by {who}{why} halted: nothing is pinned"
            return (f"; rolled back from {self.rolled_back_from[:12]} by {who}{why}; pinned at {short} until the "
                    f"branch moves past {self.rolled_back_from[:12]} or `controller unpin {name}`")
        return ""

    def _look(self, project: Path) -> list[Verdict]:
        """Compare the hosts with their manifests, one look each."""
        self.progress.step(f"{self.app.name}: verifying the hosts against their manifests (one look each)")
        states = {row.host: row.state for row in self.store.hosts(self.app.name)}
        # a preview's look never becomes any host's health: no check runs for it
        checks = self.app.health if self.kind is not Kind.PREVIEW else ()
        verdicts = verify_hosts(self.config, self.store.manifests(self.app.name), states, self.digest, project,
                                checks)
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

    def _last_good(self) -> str | None:
        """The revision the app's hosts ran before this one, newest first, that no rollout halted on."""
        rows = sorted((row for row in self.before.values() if row.revision and row.revision != self.revision.sha
                       and self.store.halted(self.app.name, row.revision) is None),
                      key=lambda row: row.applied_at or "", reverse=True)
        return rows[0].revision if rows else None

    def _applied_at(self) -> dict[str, str | None]:
        """Each host's revision as the plan counts it: this one where a revision the same for the app ran."""
        return {host: self.revision.sha if host in self.at_revision else row.revision
                for host, row in self.before.items()}

    def _gates(self, checked: Report) -> Gates | None:
        """A preview's batches over the hosts a sync would apply to, and the checks each must pass."""
        steps, checks = self.app.rollout, tuple(str(check) for check in self.app.health)
        if steps is None and not checks:
            return None
        hosts = plan_apply(checked, self._applied_at(), self.revision.sha).hosts
        batches = steps.split(hosts) if steps else [hosts]
        return Gates(tuple(tuple(batch) for batch in batches), checks, steps.on_failure if steps else None)

    def _health(self, prepared: Preparation, verdicts: list[Verdict], checked: Report,
                applied: Report | None) -> dict[str, HostHealth]:
        """Each host's health after this run: what the verify's look found where nothing was applied since, or the
        rollout after a host's batch; the others in one more round trip each. An unreachable host is unknown; a
        host Ansible does not reach over ssh (local, a container) has none."""
        if not self.app.health:
            return {}
        touched = {h.host for h in applied.hosts} if applied else set()
        # a look that failed (a key only the checkout holds, decrypted later) is asked again after the full check
        found = {v.host: v.health for v in verdicts
                 if v.health is not None and v.health.health is not Health.UNKNOWN and v.host not in touched}
        found = self._masked(prepared, found)
        found.update(self.batch_health)
        final = merged(checked, applied).hosts
        found.update({h.host: HostHealth.of(h.host, (), "unreachable: not asked") for h in final
                      if h.host not in found and h.status is TaskStatus.UNREACHABLE})
        found.update(self._ask_health(prepared, self.app, [h.host for h in final if h.host not in found],
                                      prepared.space.project))
        return found

    def _ask_health(self, prepared: Preparation, app: App, hosts: list[str], project: Path) -> dict[str, HostHealth]:
        """``app``'s health checks on those of ``hosts`` reached over ssh (as this run's plays or the last full run
        reached them), all at once; masked. A failure to ask makes them unknown, never the run a failure."""
        connections = {host: m.connection for host, m in self.store.manifests(app.name).items()
                       if m is not None and not m.error}
        connections.update(self.connections)
        ask = {host: connections[host] for host in hosts if host in connections}
        if not ask:
            return {}
        self.progress.step(f"{app.name}: health checks on {', '.join(ask)}")
        try:
            found = check_health(self.config, app.health, ask, project)
        except (ControllerError, OSError, ValueError) as error:
            why = error.message if isinstance(error, ControllerError) else str(error)
            return {host: HostHealth.of(host, (), f"could not run the health checks: {why}") for host in ask}
        return self._masked(prepared, found)

    def _masked(self, prepared: Preparation, found: dict[str, HostHealth]) -> dict[str, HostHealth]:
        """What the checks said, every secret of the revision masked (decrypted to learn them when a check failed
        and nothing was decrypted yet); withheld when they cannot be."""
        if not any(not c.passed for h in found.values() for c in h.checks):
            return found
        try:
            mask = prepared.redactor().text
        except ControllerError as error:
            self.progress.notice(f"{self.app.name}: what the failed health checks printed is withheld: {error}")
            return {host: h.withheld() for host, h in found.items()}
        return {host: h.redacted(mask) for host, h in found.items()}

    def _batch_health(self, prepared: Preparation, app: App, hosts: list[str],
                      project: Path) -> dict[str, HostHealth]:
        """``app``'s health checks on ``hosts`` (of a batch just applied, or rolled back), remembered for the run."""
        found = self._ask_health(prepared, app, hosts, project)
        self.batch_health.update(found)
        return found

    def _rolling(self, run_id: int, staged: Staged, message: str) -> None:
        """A step of a rollout in batches: on the terminal, and for the dashboard (which a store write that fails
        leaves behind, never the rollout)."""
        if message:
            self.progress.step(message)
        try:
            self.store.set_live_rollout(run_id, staged.now())
        except StoreError as error:
            log.warning("run %d: the dashboard will not follow this rollout batch by batch: %s", run_id, error)

    def _rollback(self, run_id: int, prepared: Preparation, hosts: list[str], staged: Staged) -> None:
        """Put ``hosts`` back to the revision each ran before this run: that revision extracted, decrypted and
        syntax-checked like any, its apply limited to them, then its health checks."""
        by_revision: dict[str, list[str]] = {}
        for host in hosts:
            before = self.before.get(host)
            if before is None or before.revision is None or before.revision == self.revision.sha:
                staged.kept[host] = "no earlier revision was applied there"
            else:
                by_revision.setdefault(before.revision, []).append(host)
        for sha, group in sorted(by_revision.items()):
            self.progress.step(f"{self.app.name}: rolling {', '.join(group)} back to {sha[:12]}")
            try:
                played, old, at = self._play_at(prepared, sha, Phase.ROLLBACK, check=False, limit=",".join(group))
            except ControllerError as error:
                staged.kept.update(dict.fromkeys(group, error.message))
                continue
            found = report(played)
            self.store.add_report(run_id, Phase.ROLLBACK, found)
            staged.rolled_back.update({h.host: sha for h in found.hosts if h.status.reached})
            staged.kept.update({h.host: f"its rollback {h.status}" for h in found.hosts if not h.status.reached})
            staged.mixed.update(h.host for h in found.hosts if not h.status.reached)
            back = [h.host for h in found.hosts if h.status.reached]
            if old.health:
                self._batch_health(prepared, old, back, at.space.project)
            else:  # what the failed batch's checks found is not what runs there now: asked again at the end
                for host in back:
                    self.batch_health.pop(host, None)

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
        self.progress.step(f"{self.app.name}: check at {short}, the revision its hosts run, to tell drift already "
                           "there apart")
        try:
            played, _, _ = self._play_at(prepared, applied, Phase.CHECK, check=True)
        except ControllerError as error:  # a stop is no error: it ends the preview
            self.progress.notice(f"{self.app.name}: the applied {short} could not be checked ({error}); every "
                                 "change the preview finds is shown as this change's")
            return None
        return report(played)

    def _play_at(self, prepared: Preparation, sha: str, phase: Phase, *, check: bool,
                 limit: str | None = None) -> tuple[PlayRun, App, Preparation]:
        """The app's playbook as revision ``sha`` has it (a preview's baseline, a rollback), unpacked, decrypted and
        syntax-checked beside this revision's; both revisions' secrets are masked in what it shows."""
        at, apps = prepared.at(sha)
        app = apps.get(self.app.name)
        if app is None:
            raise ControllerError(Reason.NOT_FOUND, f"{self.app.name} is not in gitops.yml at {sha[:12]}")
        job, redactor = at.ready(app)
        job = self._shared(job)
        label = f"{phase} at {sha[:12]}"
        played = run_playbook(app, at.space.project, self._private(at.space.runner) / phase, job, check=check,
                              redactor=redactor + prepared.redactor(), cancel=self.cancel, limit=limit,
                              on_task=lambda task: self.progress.task(app.name, label, task),
                              on_start=lambda task, host: self.progress.started(app.name, label, task, host))
        return played, app, at

    def _play(self, run_id: int, prepared: Preparation, *, check: bool, limit: str | None,
              baseline: Report | None = None) -> Report:
        app, phase, space = self.app, Phase.CHECK if check else Phase.APPLY, prepared.space
        job, redactor = prepared.ready(app)
        job = self._shared(job)
        where = f" on {limit}" if limit else ""
        self.progress.step(f"{app.name}: {phase} ({app.playbook} on {app.inventory}{where})")
        live = LiveTasks(self.store, run_id, phase)

        def task(result: TaskResult) -> None:
            self.progress.task(app.name, phase, result)
            live.add(result)

        def started(name: str, host: str) -> None:
            live.flush()  # the task before it has ended on every host it ran on (linear: in lockstep)
            self.progress.started(app.name, phase, name, host)

        if self.playbook is None:
            self.playbook = prepared.parked(app) or Playbook(app, space.project, self._private(space.runner) / phase,
                                                             job, redactor=redactor, cancel=self.cancel)
        try:
            played = self.playbook.play(check=check, limit=limit, on_task=task, on_start=started,
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
        except StoreError as error:
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
    def of(cls, applied: Report | None, revision: Revision, at_revision: set[str],
           rolled_back: Mapping[str, str]) -> Rollout:
        """``rolled_back`` hosts got the revision and lost it again: neither rolled out to nor corrected."""
        changed = [h for h in applied.with_status(TaskStatus.CHANGED) if h not in rolled_back] if applied else []
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
        # a sync under policy apply that applied nothing says why further on (halted, waiting, held by a window)
        why = {Kind.PREVIEW: "preview", Kind.CHECK: "check only", Kind.VERIFY: "verify only"}.get(
            kind, "policy detect" if app.policy is Policy.DETECT else None)
        if why:
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
