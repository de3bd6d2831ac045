"""The one vocabulary: every kind, status, state, policy, phase, trigger, outcome, reason, event and exit code.

Declared once, used everywhere a person or a machine sees them: output, JSON, the state store, metrics and
notifications carry these very strings (the store's are unchanged since they were first written).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Kind(StrEnum):
    """What a run was asked to do; only a ``sync`` that ran the apply changes what is applied where."""

    CHECK = "check"        # check+diff of the branch head; becomes the app's (and its hosts') state
    PREVIEW = "preview"    # --revision other than the head, or --dry-run: recorded, never the app's state
    SYNC = "sync"          # check, then apply where needed (policy apply)
    VERIFY = "verify"      # hosts compared with their manifests; a full check only where they differ


class Mode(StrEnum):
    """The command that asked for a run; its Kind says what the run became (a check of a pull request is a preview)."""

    CHECK = "check"
    SYNC = "sync"
    VERIFY = "verify"


class Trigger(StrEnum):
    """Why a run started."""

    MANUAL = "manual"      # a person or cron ran the command
    UI = "ui"              # a dashboard action
    WEBHOOK = "webhook"    # a signed push webhook woke the daemon
    PUSH = "push"          # the source is a bare repository on this host, and its branch moved
    POLL = "poll"          # the daemon's poll found the branch moved
    SCHEDULE = "schedule"  # an app's drift check was due
    RETRY = "retry"        # the daemon retries a failed cycle
    VERIFY = "verify"      # the daemon's verify interval: one look per host between full checks
    WINDOW = "window"      # a maintenance window that held an app's applies ended (gitops.yml windows:)
    ROLLBACK = "rollback"  # `controller rollback`: a person put an app back to an earlier revision and pinned it


class Action(StrEnum):
    """What a person can do to an app from the dashboard (``POST /apps/APP/ACTION``, and under /api/)."""

    SYNC = "sync"        # reconcile it now, as its policy says
    CHECK = "check"      # check it now, change nothing (whatever its policy)
    APPLY = "apply"      # apply a detect app on purpose (sync --apply)
    SUSPEND = "suspend"
    RESUME = "resume"
    APPROVE = "approve"  # let the next sync apply the revision the app's latest sync held for approval

    @property
    def reconciles(self) -> bool:
        """The action runs a cycle (under the lock), rather than only changing what the store says."""
        return self in (Action.SYNC, Action.CHECK, Action.APPLY)


class Act(StrEnum):
    """What a person did to an app, as the audit trail records it (with who, when and why)."""

    SYNC = "sync"                        # the dashboard's Sync now (Sync this host only)
    CHECK = "check"                      # the dashboard's Check now
    APPLY = "apply"                      # the dashboard's Apply now (a detect app)
    SUSPEND = "suspend"
    RESUME = "resume"
    APPROVE = "approve"
    ROLLBACK = "rollback"                # put back to an earlier revision, and pinned there
    UNPIN = "unpin"                      # let follow the branch again (by a person, or the branch moving)
    OVERRIDE_WINDOW = "override-window"  # applied inside a maintenance window that held it (sync --override-window)


class Policy(StrEnum):
    """What a sync does with an app (gitops.yml)."""

    APPLY = "apply"    # converge automatically
    DETECT = "detect"  # only report drift (applied only on request: sync --apply, the dashboard's Apply)


class Phase(StrEnum):
    """The ways a run plays a playbook."""

    CHECK = "check"        # check + diff mode: what would change
    APPLY = "apply"        # for real, on the hosts the plan chose
    ROLLBACK = "rollback"  # a halted rollout's failed batch put back to the revision each host had before


class OnFailure(StrEnum):
    """What a rollout in batches does when a batch fails its apply or its health checks (gitops.yml)."""

    HALT = "halt"          # leave the remaining hosts untouched
    ROLLBACK = "rollback"  # and put the failed batch back to the revision each host had before


class Approval(StrEnum):
    """Whether a new revision of an app waits for `controller approve` before a sync applies it (gitops.yml)."""

    NONE = "none"          # applied as soon as it is checked
    REQUIRED = "required"  # checked and previewed, then held until someone approves that very revision


class Heal(StrEnum):
    """Whether drift at the revision already applied is corrected inside a window that holds applies (gitops.yml)."""

    WHEN_OPEN = "when-open"  # only when the app's windows allow applies, as a new revision
    ALWAYS = "always"        # at any time: only new revisions wait for the window


class RolloutStep(StrEnum):
    """What a running rollout in batches is doing to its current batch (the dashboard follows it)."""

    APPLYING = "applying"
    CHECKING = "checking health"
    ROLLING_BACK = "rolling back"
    DONE = "done"          # every batch went through, or the rollout halted (and rolled back)


class TaskStatus(StrEnum):
    """One task on one host, and (ok, changed, failed, unreachable) one host in one phase of a run."""

    OK = "ok"
    CHANGED = "changed"          # drifted (check) or corrected (apply)
    FAILED = "failed"
    UNREACHABLE = "unreachable"  # could not be reached, timed out, or refused for its host key
    SKIPPED = "skipped"
    UNVERIFIED = "unverified"    # skipped by check mode (command, shell, no check-mode support)

    @property
    def broken(self) -> bool:
        """The host could not be checked or converged."""
        return self in (TaskStatus.FAILED, TaskStatus.UNREACHABLE)

    @property
    def reached(self) -> bool:
        """The task (or the host's run) went through: it is as Git says now."""
        return self in (TaskStatus.OK, TaskStatus.CHANGED)


class ApplyReason(StrEnum):
    """Why a sync's plan applies to a host (shown per host in JSON's ``applied_to``)."""

    NEW_REVISION = "new revision"        # the revision is new for the host: a rollout, or one it missed
    DRIFTED = "drifted"                  # the check found a change at the revision it runs: drift corrected
    FAILED_IN_CHECK = "failed in check"  # often a task that depends on an earlier one's change
    FORCED = "forced"                    # sync --force


class HostState(StrEnum):
    """What the state store knows of one host of an app, since when."""

    IN_SYNC = "in-sync"
    DRIFTED = "drifted"
    UNVERIFIED = "unverified"    # tasks check mode cannot verify are pending there (the revision is new to it)
    FAILED = "failed"
    UNREACHABLE = "unreachable"


class Health(StrEnum):
    """What an app's health checks (gitops.yml ``health:``) found on one host: a dimension of its own beside its
    state, as Argo CD tells Healthy from Synced."""

    HEALTHY = "healthy"      # every check passed (within its retries)
    UNHEALTHY = "unhealthy"  # a check failed every attempt
    UNKNOWN = "unknown"      # the host could not be asked (unreachable, no ssh connection known yet)


class Happened(StrEnum):
    """What one full run did to one host, as its timeline on the dashboard tells it."""

    ROLLED_OUT = "rolled out"        # an apply changed it at a revision new to it
    CORRECTED = "drift corrected"    # an apply changed it back at the revision it already ran
    APPLIED = "changes applied"      # an apply changed it (a run from before rollouts were told apart)
    ROLLED_BACK = "rolled back"      # its batch of a rollout failed: put back to the revision it ran before
    DRIFT_FOUND = "drift found"      # a check found a change and nothing applied it
    IN_SYNC = "in sync"
    UNVERIFIED = "unverified"        # tasks check mode cannot verify were pending
    FAILED = "failed"
    UNREACHABLE = "unreachable"


class Provider(StrEnum):
    """Who sends the webhook: the last part of its URL, ``/hooks/PROVIDER``."""

    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"                        # and Forgejo
    GOGS = "gogs"
    BITBUCKET_SERVER = "bitbucket-server"  # Bitbucket Data Center (formerly Server)
    BITBUCKET_CLOUD = "bitbucket-cloud"    # the secret is the last part of the URL: /hooks/bitbucket-cloud/SECRET
    AZURE_DEVOPS = "azure-devops"
    GENERIC = "generic"
    FLUX = "flux"                          # what Flux's generic-hmac receiver takes: any body, X-Signature

    @property
    def in_clear(self) -> bool:
        """The sender shows the secret itself rather than a signature made with it."""
        return self in (Provider.GITLAB, Provider.BITBUCKET_CLOUD, Provider.AZURE_DEVOPS)


NO_APP = "*"
"""The app a failure is recorded under when no app could be read (Git down before gitops.yml, no app known yet)."""

MASK = "[redacted]"
"""What is shown, logged and stored in place of a secret (a decrypted value, a password in a Git URL)."""

RUNNING = "running"
"""What a run not finished yet shows (and is filtered by) in place of an outcome: it has none recorded."""


class Outcome(StrEnum):
    """How one app's run ended."""

    IN_SYNC = "in-sync"          # the check found nothing to change and nothing it could not verify
    CONVERGED = "converged"      # applied where needed, every host converged
    DRIFTED = "drifted"          # drift found and left in place (check, preview, policy detect)
    PARTIAL = "partial"          # some hosts converged or were checked, others failed or were unreachable
    UNVERIFIED = "unverified"    # nothing changed, but tasks check mode cannot verify were not applied
    FAILED = "failed"            # stopped before anything was applied, or the run itself failed
    INTERRUPTED = "interrupted"  # stopped by a signal, or its controller was killed (found at the next start),
    #                              or superseded by a push during its check (watch)
    SUSPENDED = "suspended"      # not reconciled: `controller suspend` (not recorded as a run)
    HELD = "held"                # checked; applies held by a maintenance window, an approval or a pin

    def exit_code(self, accept_unverified: bool = False) -> ExitCode:
        """The exit code this outcome stands for (``--accept-unverified`` makes unverified 0)."""
        if self is Outcome.UNVERIFIED and accept_unverified:
            return ExitCode.OK
        return _EXIT_CODES[self]

    @property
    def troubled(self) -> bool:
        """A failure to announce and retry (an interruption is not one: it is a stop)."""
        return self in (Outcome.FAILED, Outcome.PARTIAL)

    @property
    def settled(self) -> bool:
        """Nothing left for a sync to do at this revision until Git or the schedule says otherwise."""
        return self in (Outcome.IN_SYNC, Outcome.CONVERGED, Outcome.DRIFTED, Outcome.UNVERIFIED)


def failure(reason: Reason) -> Outcome:
    """The outcome of a run that raised an error with ``reason``."""
    return Outcome.INTERRUPTED if reason in (Reason.INTERRUPTED, Reason.SUPERSEDED) else Outcome.FAILED


class Reason(StrEnum):
    """Why a run did not simply succeed; declared once, used in output, the store and JSON."""

    CONFIG_INVALID = "ConfigInvalid"
    FETCH_FAILED = "FetchFailed"
    REVISION_NOT_FOUND = "RevisionNotFound"
    HISTORY_REWRITTEN = "HistoryRewritten"
    SNAPSHOT_FAILED = "SnapshotFailed"
    WORKSPACE_UNAVAILABLE = "WorkspaceUnavailable"
    DECRYPTION_FAILED = "DecryptionFailed"
    REQUIREMENTS_FAILED = "RequirementsFailed"   # a role or collection requirements.yml names did not install
    SYNTAX_CHECK_FAILED = "SyntaxCheckFailed"
    LOCK_BUSY = "LockBusy"
    HOST_UNREACHABLE = "HostUnreachable"
    TASK_FAILED = "TaskFailed"
    RUNNER_FAILED = "RunnerFailed"
    INTERRUPTED = "Interrupted"
    SUPERSEDED = "Superseded"  # watch: the branch moved during the check; the new head is reconciled next
    TIMED_OUT = "TimedOut"
    NOT_FOUND = "NotFound"
    VERIFICATION_FAILED = "VerificationFailed"
    PLAN_STALE = "PlanStale"  # sync --plan: the revision or the check differs from the reviewed plan
    HEALTH_CHECK_FAILED = "HealthCheckFailed"  # a rollout batch failed (its apply or its health checks): halted
    DEPENDENCY_NOT_READY = "DependencyNotReady"  # depends_on: an app it needs is not converged and healthy yet
    WINDOW_CLOSED = "WindowClosed"  # inside a deny window, or outside every allow window: applies wait
    APPROVAL_REQUIRED = "ApprovalRequired"  # approval: required, and nobody approved this revision yet
    PINNED = "Pinned"  # `controller rollback` pinned the app to an earlier revision: the branch head waits
    STORE_UNAVAILABLE = "StoreUnavailable"  # the state store's PostgreSQL server cannot be reached


class ExitCode(IntEnum):
    """Documented, stable exit codes for cron and CI."""

    OK = 0
    ERROR = 1
    DRIFT = 2
    UNVERIFIED = 3
    UNHEALTHY = 4   # in sync otherwise, but a health check fails on some host
    HELD = 5        # a maintenance window, a missing approval or a pin holds the applies a sync would make
    USAGE = 64
    BUG = 70
    LOCKED = 75     # EX_TEMPFAIL: try again later


_EXIT_CODES = {
    Outcome.IN_SYNC: ExitCode.OK, Outcome.CONVERGED: ExitCode.OK, Outcome.SUSPENDED: ExitCode.OK,
    Outcome.DRIFTED: ExitCode.DRIFT, Outcome.PARTIAL: ExitCode.DRIFT,
    Outcome.UNVERIFIED: ExitCode.UNVERIFIED,
    Outcome.FAILED: ExitCode.ERROR, Outcome.INTERRUPTED: ExitCode.ERROR, Outcome.HELD: ExitCode.HELD,
}

# What each exit code means to `check` and to `sync`: the README's table and --help are made from this.
EXIT_CODE_MEANINGS: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("in sync (verify: every host verified or, fully checked, in sync)", "converged, or nothing to do"),
    ExitCode.ERROR: ("error (config, Git, signatures, secrets, requirements, syntax check) or interrupted; "
                     "nothing applied",
                     "same; an interrupted apply may have changed some hosts (see `controller show`)"),
    ExitCode.DRIFT: ("drift found, or a host could not be checked", "drift remains: policy `detect`, or a host "
                     "failed or was unreachable (the others converged; the run is `partial`)"),
    ExitCode.UNVERIFIED: ("in sync as far as check mode can tell, but tasks it cannot verify (`command`, "
                          "`shell`, no check mode) are open: they have not run at this revision on some host yet; "
                          "0 with `--accept-unverified`", "same"),
    ExitCode.UNHEALTHY: ("in sync otherwise (or only unverified: 4 comes before 3), but an app's health check "
                         "(gitops.yml `health:`) fails on a host the run checked", "same, after the apply"),
    ExitCode.HELD: ("(never: a check applies nothing)", "a maintenance window (gitops.yml `windows:`) holds the "
                    "apply: the hosts that differ are left as they are until it opens, which the output says "
                    "(`--override-window` applies now); or the revision waits for `controller approve` "
                    "(gitops.yml `approval: required`); or `controller rollback` pinned the app to an earlier "
                    "revision, which it heals drift at until the branch moves or `controller unpin`"),
    ExitCode.USAGE: ("usage error", "same"),
    ExitCode.BUG: ("internal error (a bug; traceback printed)", "same"),
    ExitCode.LOCKED: ("another run holds the lock (`--wait` to queue)", "same"),
}


class Event(StrEnum):
    """What a notification announces: a change in an app's state, never the same state twice."""

    DRIFT_FOUND = "drift-found"
    DRIFT_CORRECTED = "drift-corrected"
    REVISION_APPLIED = "revision-applied"
    RUN_FAILED = "run-failed"
    RECOVERED = "recovered"
    VERIFICATION_FAILED = "verification-failed"
    HEALTH_DEGRADED = "health-degraded"    # a host's health check failed where it passed (or was not known)
    HEALTH_RECOVERED = "health-recovered"  # and passes again
    APPROVAL_REQUIRED = "approval-required"  # a new revision was checked and waits for `controller approve`


EVENTS = tuple(e.value for e in Event)
