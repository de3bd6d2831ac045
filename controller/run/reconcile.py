"""The pipeline: fetch -> snapshot -> decrypt -> gate -> check -> report -> apply -> record."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.clock import parse_time
from controller.config import Config
from controller.errors import ControllerError, Interrupted
from controller.interrupt import Cancel
from controller.run.dispatch import Dispatch, failed_run, holds, in_order
from controller.run.preparation import Preparation
from controller.run.results import AppResult, Progress, Request, Result
from controller.run.schedule import DriftSchedule
from controller.secrets.workspace import workspace
from controller.source.apps import App, load_apps
from controller.source.git import Source
from controller.source.impact import Impact
from controller.source.revision import Revision
from controller.source.signatures import verify_revision
from controller.state.store import Store
from controller.verify.manifest import inputs_digest
from controller.vocabulary import NO_APP, Kind, Outcome, Reason


def source_of(config: Config) -> Source:
    """The configured Git source with its cache under the state directory."""
    return Source(config.source.url, config.source.branch, config.state_path / "cache" / "source.git",
                  timeout=config.source.fetch_timeout)


def reconcile(config: Config, request: Request, store: Store, progress: Progress, cancel: Cancel) -> Result:
    """Run the pipeline once; every outcome, failures included, is recorded in ``store``."""
    revision: Revision | None = None
    kind = request.kind()
    apps: tuple[App, ...] = ()
    # only looking whether anything is to do (a poll, --only-if-changed; a verify's look at the hosts):
    # a stop then is no run, since nothing was under way, and the apps keep their real last failure
    looking = request.only_if_changed or request.verifying
    results: list[AppResult] = []
    try:
        source = source_of(config)
        if request.fetch:
            progress.step(f"fetching {config.source.branch} from {source.url.shown}")
        head = source.fetch() if request.fetch else source.head()
        revision = _rollback_target(config, source, store, request, head) if request.rollback else (
            source.resolve(request.revision) if request.revision else head)
        kind = request.kind(revision.sha, head.sha)
        if request.plan is not None and request.plan.revision != revision.sha:
            raise ControllerError(Reason.PLAN_STALE, f"the plan is for {request.plan.revision[:12]}, but "
                                  f"{config.source.branch} is at {revision.short}: preview that and review it again")
        if kind is Kind.PREVIEW and revision.sha != head.sha and config.source.verify.mode == "off":
            progress.notice(f"previewing {revision.short}, which no signature check vouches for (source.verify is "
                            "off): its plugins and local tasks run on this bastion, its check_mode: false tasks "
                            "on the hosts")
        if request.only_if_changed:
            until = _held_until(store)
            if idle := _idle(config, store, source, revision, request.override_window, until):
                return Result(request, revision, (), idle, kind, held_until=until)
        # a verify goes on looking until a host needs a playbook: AppRun records the run from then on, so a
        # stop that reaches this far is a stop while looking (or between two apps)
        looking = request.verifying
        store.record_revision(revision)
        # before anything is extracted
        verify_revision(config, source, revision, store.applied_revisions(request.app), progress.step)
        with workspace(Path(config.workspace_dir)) as space, ExitStack() as leaving:
            progress.step(f"revision {revision.short} {revision.subject!r}")
            source.extract(revision.sha, space.project)
            every = load_apps(space.project)
            apps = _select(every, request.app)
            suspended = store.suspensions() if kind is Kind.SYNC else {}
            changes = _changes(source, store, apps, revision.sha)
            unreached = _unreached(changes, every, space.project)
            # of the files as committed: a changed secret is a changed ciphertext, and nothing is decrypted yet;
            # an app the revision cannot affect keeps the digest of the revision it is the same as, so that its
            # hosts' manifests still vouch for them
            here = {app.name: inputs_digest(config, revision.sha, app, space.project) for app in apps}
            digests = {app.name: inputs_digest(config, unreached[app.name], app, space.project)
                       if app.name in unreached else here[app.name] for app in apps}
            running = {h.revision for app in apps for h in store.hosts(app.name) if h.revision} - {revision.sha}
            prepared = Preparation(config, space, progress, source, digests, frozenset(running),
                                   parking=cancel if len(apps) == 1 else None)
            leaving.callback(prepared.close)  # before the workspace is wiped: a process parked in it
            # a sync looks first (one look per host) at an app the revision cannot affect, as a verify does:
            # it prepares, checks and applies only where a host differs from its manifest; never in place of
            # the full check the drift schedule asks for
            looks = {app.name for app in apps if request.verifying or (
                kind is Kind.SYNC and not request.force and app.name in unreached
                and not _check_due(config, store, app.name))}
            # the apps a rollback pinned; those the pin still holds run the pinned revision's playbook: the head's
            # is not prepared for them
            pins = {app.name: pin for app in apps if kind is Kind.SYNC and not request.rollback
                    and (pin := store.pinned(app.name)) is not None}
            holding = {name for name, pin in pins.items() if holds(pin, source, revision.sha)}
            for app in apps:
                if app.name not in looks and app.name not in suspended and app.name not in holding:
                    prepared.ready(app)
            if kind is Kind.SYNC and request.app is None and not request.verifying:
                # only a revision that passed every gate retires apps
                for gone in store.retire_missing([a.name for a in every], revision.sha):
                    progress.notice(f"app {gone} is no longer in gitops.yml at {revision.short}: retired")
            dispatch = Dispatch(config, request, kind, source, prepared, progress, cancel, revision, head, suspended,
                                digests, here, unreached, looks, changes, pins, holding, results)
            return Result(request, revision, tuple(dispatch.all(apps, store)), kind=kind)
    except (ControllerError, Interrupted) as error:
        if isinstance(error, Interrupted) and looking:
            raise
        if error.reason is Reason.NOT_FOUND:  # an unknown --app: nothing ran, nothing is recorded
            return Result(request, revision, (AppResult(request.app or NO_APP, None, None, Outcome.FAILED,
                                                        error.reason, error.message),), kind=kind)
        # the apps already reconciled keep their runs: a stop after them is the stop of those not reached
        done = {result.app for result in results}
        names = [a.name for a in apps if a.name not in done] or ([] if done else _held_back(store, request.app))
        return Result(request, revision, tuple(in_order([*results, *(
            failed_run(store, name, request, kind, revision, error) for name in names)], apps)), kind=kind)


def _rollback_target(config: Config, source: Source, store: Store, request: Request, head: Revision) -> Revision:
    """Where `controller rollback` puts ``request.app``: the revision named, or the newest that converged before
    the one applied now; an ancestor of the branch head either way. Nothing is recorded when there is none."""
    app = request.app
    assert app is not None  # the command names it
    current = store.last_applied(app)
    if request.revision:
        try:
            target = source.resolve(request.revision)
        except ControllerError as error:  # a typo is no failed run of the app
            raise ControllerError(Reason.NOT_FOUND, error.message) from None
        if current and not source.descends(target.sha, current):  # forward would skip approvals and windows
            raise ControllerError(Reason.NOT_FOUND, f"{target.short} does not come before {current[:12]}, the "
                                  f"revision {app} runs now: a rollback goes back (`controller sync` goes forward)")
    else:
        earlier = [sha for sha in store.converged_revisions(app) if current and sha != current
                   and source.has_commit(sha) and source.descends(sha, current)]
        if not earlier:
            since = f"before {current[:12]}, the revision applied now" if current else "here yet"
            raise ControllerError(Reason.NOT_FOUND, f"no revision of {app} converged {since}: name one, "
                                  f"`controller rollback {app} --to REVISION`")
        target = source.resolve(earlier[0])
    branch = config.source.branch
    if target.sha == head.sha:
        raise ControllerError(Reason.NOT_FOUND, f"{target.short} is the head of {branch}: nothing to roll back to "
                              "(`controller sync` applies it)")
    if not source.descends(target.sha, head.sha):
        raise ControllerError(Reason.NOT_FOUND, f"{target.short} is not in the history of {branch} (its head is "
                              f"{head.short}): a rollback goes back along the branch; nothing applied")
    return target


def _changes(source: Source, store: Store, apps: tuple[App, ...], sha: str) -> dict[str, tuple[str, list[str]]]:
    """Per app, its last applied revision and the files changed from there to ``sha``; no entry when nothing
    was applied yet or it is the same revision (nothing to compare with), or the cache lacks it."""
    found: dict[str, tuple[str, list[str]]] = {}
    between: dict[str, list[str] | None] = {}
    for app in apps:
        since = store.last_applied(app.name)
        if since is None or since == sha:
            continue
        if since not in between:
            between[since] = source.changed(since, sha)
        if (changed := between[since]) is not None:
            found[app.name] = (since, changed)
    return found


def _unreached(changes: dict[str, tuple[str, list[str]]], every: tuple[App, ...], project: Path) -> dict[str, str]:
    """The apps a revision cannot affect (change impact: the commits since each one's last applied revision
    change nothing it uses), each with that revision."""
    if not changes:
        return {}
    impact = Impact(every, project)
    return {app.name: changes[app.name][0] for app in every
            if app.name in changes and not impact.reaches(app, changes[app.name][1])}


def _check_due(config: Config, store: Store, app: str) -> bool:
    """Whether the drift schedule asks for a full check of ``app`` now (never checked: yes)."""
    full = store.latest(app, full=True)
    return full is None or DriftSchedule.of(config.watch).due(parse_time(full.started), datetime.now(UTC))


def _held_back(store: Store, app: str | None) -> list[str]:
    """The apps a failure before gitops.yml was read holds back, so that status shows it beside each."""
    known = store.active_apps()
    if app is not None:
        return [app] if app in known else [NO_APP]
    return known or [NO_APP]


def _idle(config: Config, store: Store, source: Source, head: Revision, override: bool,
          until: str | None) -> str | None:
    """Why a sync can return at once: every app's last check or sync was a sync at ``head`` that left
    nothing to do (no host behind, none failed) or was held by a maintenance window that has not ended (``until``:
    when the first such ends; unless ``override``: --override-window), and no drift check is due."""
    newest = store.latest_sync()
    refused = newest is not None and newest.revision == head.sha and newest.reason is Reason.VERIFICATION_FAILED
    if config.source.verify.mode != "off" and refused:  # polls wait for the branch to move
        return (f"nothing to do: {config.source.branch} is still at {head.short}, which was refused for its "
                "signatures; waiting for a new commit")
    apps = store.active_apps()
    if not apps:
        return None
    held = until is not None and not override
    # an app a rollback pinned keeps the apps that depend on it waiting too, as a window does
    pins = {app: pin for app in apps if (pin := store.pinned(app)) is not None and holds(pin, source, head.sha)}
    for app in apps:
        latest = store.latest(app)
        halt = store.halted(app, head.sha)
        # a head whose rollout halted is synced as the drift healing at its last good revision; a pinned app at its pin
        synced = pins[app].revision if app in pins else head.sha if halt is None else halt.last_good
        # held by its own window that has not ended, or waiting for an app that is (its dependency is not ready until
        # that window ends), or for an approval nobody gave yet
        waits = latest is not None and (
            (latest.reason is Reason.WINDOW_CLOSED and _until(latest.summary) is not None and not override)
            or (latest.reason is Reason.DEPENDENCY_NOT_READY and (held or bool(pins)))
            or (latest.reason is Reason.APPROVAL_REQUIRED and store.approval(app, latest.revision or "") is None)
            or (latest.reason is Reason.PINNED and app in pins))
        if latest is None or latest.kind is not Kind.SYNC or latest.revision not in (head.sha, synced) \
                or (latest.reason is Reason.DEPENDENCY_NOT_READY and not waits) \
                or latest.outcome is None or not (latest.outcome.settled or waits) or _check_due(config, store, app):
            return None
    return (f"nothing to do: {config.source.branch} is still at {head.short}, already synced "
            f"({', '.join(apps)})" + (", held by a maintenance window" if held else "") + ", and no drift check is due")


def _held_until(store: Store) -> str | None:
    """When the first maintenance window that holds an app's apply (as its last sync found) ends, if one does."""
    ends = [until for app in store.active_apps() if (latest := store.latest(app)) is not None
            and latest.reason is Reason.WINDOW_CLOSED and (until := _until(latest.summary)) is not None]
    return min(ends, key=parse_time) if ends else None


def _until(summary: dict[str, Any]) -> str | None:
    """When the window that held a sync ends, if it has not yet."""
    until = summary.get("window", {}).get("until")
    return str(until) if until and parse_time(until) > datetime.now(UTC) else None


def _select(apps: tuple[App, ...], name: str | None) -> tuple[App, ...]:
    if name is None:
        return apps
    chosen = tuple(a for a in apps if a.name == name)
    if not chosen:
        raise ControllerError(Reason.NOT_FOUND,
                              f"no app {name!r} in gitops.yml (apps: {', '.join(a.name for a in apps)})")
    return chosen
