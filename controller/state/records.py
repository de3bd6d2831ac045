"""What the state store hands out: one frozen record per row it reads, typed with the vocabulary.

The stored strings are the vocabulary's values, so a record is its row with each column in its own type;
how a record reads as JSON or text is the report side's business (``controller.report.documents``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.vocabulary import (
    Act,
    Happened,
    Health,
    HostState,
    Kind,
    Outcome,
    Phase,
    Policy,
    Reason,
    TaskStatus,
    Trigger,
)


@dataclass(frozen=True)
class RunRecord:
    """One run of one app (``*``: a run that failed before it knew its apps)."""

    id: int
    app: str
    revision: str | None
    kind: Kind                 # the ``mode`` column
    trigger: Trigger
    started: str
    finished: str | None       # None: still running, or its controller was killed (until the next start)
    outcome: Outcome | None    # None: still running
    reason: Reason | None
    message: str
    applied: bool
    summary: dict[str, Any]    # what the run wrote about itself, kept as the JSON document it is
    verified: int              # hosts verified against their manifests instead of fully checked
    seconds: float | None
    policy: Policy | None      # the app's in gitops.yml then (None: not read by that run)
    folded: int = 1            # how many runs, all the same, this one stands for (state/retention.py)
    first_started: str | None = None  # when the first of them started (None: it stands for itself alone)
    kept: bool = True          # never pruned: an apply, a failure, a diff, a state change (state/retention.py)


@dataclass(frozen=True)
class HostResult:
    """How one host came out of one phase of a run."""

    phase: Phase
    host: str
    status: TaskStatus
    changed: int
    unverified: int


@dataclass(frozen=True)
class TaskRecord:
    """One task on one host in one phase of a run, as its drift report shows it (already redacted)."""

    phase: Phase
    host: str
    task: str
    action: str
    status: TaskStatus
    diff: str
    message: str


@dataclass(frozen=True)
class LiveTask:
    """One task result of a run still going, as it arrived (the dashboard follows a run with these)."""

    phase: Phase
    host: str
    task: str
    status: TaskStatus
    at: str


@dataclass(frozen=True)
class AuditEntry:
    """What a person did to an app (vocabulary.Act): who, when, why, at which revision, and the run it started."""

    id: int
    at: str
    who: str
    act: Act
    app: str
    revision: str | None
    reason: str
    run_id: int | None


@dataclass(frozen=True)
class RunDetail:
    """A run with its per-host results and its tasks (``controller show``)."""

    run: RunRecord
    hosts: tuple[HostResult, ...]
    tasks: tuple[TaskRecord, ...]
    audit: tuple[AuditEntry, ...] = ()  # what a person did that started it, or that it did for them


@dataclass(frozen=True)
class HostRecord:
    """One host of an app: the revision last applied there and when, and its state since when."""

    host: str
    revision: str | None
    applied_at: str | None
    state: HostState
    since: str
    run_id: int | None
    health: Health | None = None     # None: the app declares no health check
    health_since: str | None = None
    health_detail: str = ""          # what the failed checks said, or why they could not run


@dataclass(frozen=True)
class Halt:
    """A revision whose rollout in batches halted on an app: not applied again until the branch moves."""

    revision: str
    run_id: int
    since: str
    last_good: str | None  # the revision the app's hosts ran before (what a rollback puts back)
    detail: str            # which hosts failed, and how


@dataclass(frozen=True)
class Pin:
    """An app put back to an earlier revision by `controller rollback`: syncs stay there (and heal drift there)
    until the branch moves past the head it was rolled back from, or `controller unpin`."""

    revision: str
    rolled_back_from: str  # the branch head when it was rolled back: the one held
    run_id: int            # the rollback's run
    by: str
    at: str
    reason: str

    @property
    def revert(self) -> str:
        """The Git command that makes the branch say what the hosts run (one revert commit per commit since)."""
        return f"git revert --no-edit {self.revision[:12]}..{self.rolled_back_from[:12]}"


@dataclass(frozen=True)
class Suspension:
    """Why and since when an app is not reconciled."""

    since: str
    reason: str


@dataclass(frozen=True)
class Approved:
    """Who let a sync apply a revision of an app (``controller approve``), when and why."""

    revision: str
    who: str
    at: str
    reason: str


@dataclass(frozen=True)
class Commit:
    """A revision as recorded when first reconciled."""

    sha: str
    subject: str
    author: str
    committed_at: str
    first_seen: str


@dataclass(frozen=True)
class AppStatus:
    """One app as `controller status` tells it: its applied revision, its state from the newest run that did
    not fail outright, and the newest failure when that is newer."""

    app: str
    policy: Policy | None
    suspension: Suspension | None
    applied_revision: str | None
    hosts_at_revision: int
    state: Outcome | None      # None: its only check or sync is still running
    reason: Reason | None
    detail: str
    last_run: RunRecord        # the newest check or sync
    failure: RunRecord | None  # the newest run, when it failed after the state above was known
    hosts: tuple[HostRecord, ...]
    halt: Halt | None = None   # the newest revision a rollout halted on, until one completes
    pin: Pin | None = None     # where `controller rollback` put the app, until the branch moves or an unpin

    @property
    def suspended(self) -> bool:
        return self.suspension is not None

    @property
    def health(self) -> Health | None:
        """Unhealthy when a host is, healthy when every host is known to be; None without health checks."""
        known = {h.health for h in self.hosts if h.health is not None}
        if not known:
            return None
        for health in (Health.UNHEALTHY, Health.UNKNOWN):
            if health in known:
                return health
        return Health.HEALTHY


@dataclass(frozen=True)
class HostChanges:
    """Per app, the hosts syncs changed since migration 6: a new revision rolled out, or drift corrected."""

    app: str
    rolled_out: int
    corrected: int


@dataclass(frozen=True)
class Tally:
    """Finished runs of one app, kind and outcome, for /metrics."""

    app: str
    kind: Kind
    outcome: Outcome
    runs: int
    seconds: float
    last_finished: str
    buckets: tuple[int, ...]   # how many took at most each of DURATION_BUCKETS seconds


@dataclass(frozen=True)
class HostEvent:
    """One full run of an app as one of its hosts saw it: what happened there, when, by what trigger."""

    run: RunRecord
    happened: Happened

    @classmethod
    def of(cls, run: RunRecord, host: str, statuses: dict[Phase, TaskStatus]) -> HostEvent:
        """Classify ``host``'s results in ``run`` (its status in each phase that reached it)."""
        applied, checked = statuses.get(Phase.APPLY), statuses.get(Phase.CHECK)
        if statuses.get(Phase.ROLLBACK, TaskStatus.FAILED).reached:
            return cls(run, Happened.ROLLED_BACK)
        final = applied or checked
        if final is TaskStatus.FAILED:
            return cls(run, Happened.FAILED)
        if final is TaskStatus.UNREACHABLE:
            return cls(run, Happened.UNREACHABLE)
        if applied is TaskStatus.CHANGED:
            if "rolled_out" not in run.summary:
                return cls(run, Happened.APPLIED)
            return cls(run, Happened.ROLLED_OUT if host in run.summary["rolled_out"] else Happened.CORRECTED)
        if applied is None and checked is TaskStatus.CHANGED:
            return cls(run, Happened.DRIFT_FOUND)
        if applied is None and checked is TaskStatus.UNVERIFIED:
            return cls(run, Happened.UNVERIFIED)
        return cls(run, Happened.IN_SYNC)
