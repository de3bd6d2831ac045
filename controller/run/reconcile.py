"""The pipeline: fetch -> snapshot -> decrypt -> gate -> check -> report -> apply -> record."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.clock import parse_time
from controller.config import Config
from controller.errors import ControllerError, Failure, Interrupted
from controller.interrupt import Cancel
from controller.run.app_run import AppRun
from controller.run.preparation import Preparation
from controller.run.results import AppResult, Progress, Request, Result
from controller.run.schedule import DriftSchedule
from controller.secrets.workspace import workspace
from controller.source.apps import App, Window, load_apps
from controller.source.git import Source
from controller.source.impact import Impact
from controller.source.revision import Revision
from controller.source.signatures import verify_revision
from controller.state.records import Pin, Suspension
from controller.state.store import Store
from controller.verify.manifest import inputs_digest
from controller.vocabulary import NO_APP, Health, HostState, Kind, Outcome, Reason, failure


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
        if request.only_if_changed and (idle := _idle(config, store, revision, request.override_window)):
            return Result(request, revision, (), idle, kind, held_until=_held_until(store))
        # a verify goes on looking until a host needs a playbook: AppRun records the run from then on, so a
        # stop that reaches this far is a stop while looking (or between two apps)
        looking = request.verifying
        store.record_revision(revision)
        # before anything is extracted
        verify_revision(config, source, revision, store.applied_revisions(request.app), progress.step)
        with workspace(Path(config.workspace_dir)) as space:
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
            prepared = Preparation(config, space, progress, source, digests, frozenset(running))
            # a sync looks first (one look per host) at an app the revision cannot affect, as a verify does:
            # it prepares, checks and applies only where a host differs from its manifest; never in place of
            # the full check the drift schedule asks for
            looks = {app.name for app in apps if request.verifying or (
                kind is Kind.SYNC and not request.force and app.name in unreached
                and not _check_due(config, store, app.name))}
            for app in apps:
                if app.name not in looks and app.name not in suspended:
                    prepared.ready(app)
            if kind is Kind.SYNC and request.app is None and not request.verifying:
                # only a revision that passed every gate retires apps
                for gone in store.retire_missing([a.name for a in every], revision.sha):
                    progress.notice(f"app {gone} is no longer in gitops.yml at {revision.short}: retired")
            for app in apps:
                if cancel():
                    break
                if newer := cancel.superseded(revision.sha):
                    results.append(AppResult(app.name, app.policy, None, Outcome.INTERRUPTED, Reason.SUPERSEDED,
                                             f"not reconciled at {revision.short}: superseded by {newer}, "
                                             "which is reconciled next", kind=kind))
                    continue
                if app.name in suspended:
                    results.append(_suspended(app, suspended[app.name]))
                    continue
                # the app's windows as the branch head has them, whichever revision the sync applies
                windows = app.windows if kind is Kind.SYNC else ()
                if kind is Kind.SYNC and not request.rollback and (pin := store.pinned(app.name)):
                    if pin.rolled_back_from == revision.sha:
                        results.append(_pinned(config, request, store, source, prepared, progress, cancel, app, pin,
                                               revision, windows))
                        continue
                    # the branch moved past the head it was rolled back from: followed again
                    moved = f"{config.source.branch} moved past {pin.rolled_back_from[:12]}"
                    store.unpin(app.name, "controller", f"{moved} to {revision.short}")
                    progress.notice(f"{app.name}: {moved}, which {app.name} was rolled back from: no longer pinned "
                                    f"at {pin.revision[:12]}")
                if healing := _healing(config, request, kind, store, source, prepared, progress, cancel, app,
                                       revision.sha):
                    healing[0].windows = windows
                    results.append(healing[0].reconcile(source, healing[1]))
                    continue
                run = AppRun(app, request, kind, revision, store, progress, cancel, config, digests[app.name],
                             here[app.name],
                             same_as=unreached.get(app.name), looks=app.name in looks,
                             changed=tuple(changes[app.name][1]) if changes.get(app.name) else (),
                             # a rollback goes back on purpose, whatever the apps it depends on run
                             waiting=_waiting(app, results, store, revision.sha)
                             if kind is Kind.SYNC and not request.rollback else None,
                             windows=windows, rolled_back_from=head.sha if request.rollback else None)
                results.append(run.reconcile(source, prepared))
            return Result(request, revision, tuple(results), kind=kind)
    except (ControllerError, Interrupted) as error:
        if isinstance(error, Interrupted) and looking:
            raise
        if error.reason is Reason.NOT_FOUND:  # an unknown --app: nothing ran, nothing is recorded
            return Result(request, revision, (AppResult(request.app or NO_APP, None, None, Outcome.FAILED,
                                                        error.reason, error.message),), kind=kind)
        # the apps already reconciled keep their runs: a stop after them is the stop of those not reached
        done = {result.app for result in results}
        names = [a.name for a in apps if a.name not in done] or ([] if done else _held_back(store, request.app))
        return Result(request, revision, (*results, *(
            _failed(store, name, request, kind, revision, error) for name in names)), kind=kind)


def _healing(config: Config, request: Request, kind: Kind, store: Store, source: Source, prepared: Preparation,
             progress: Progress, cancel: Cancel, app: App, head: str) -> tuple[AppRun, Preparation] | None:
    """While the branch head's rollout is halted on ``app``, a sync heals drift at the last good revision instead,
    on the hosts that run it (never a host the halted revision reached): that revision's run, and where it runs."""
    halt = store.halted(app.name, head) if kind is Kind.SYNC and not request.force and not request.limit else None
    hosts = [h.host for h in store.hosts(app.name) if halt and h.revision == halt.last_good]
    if halt is None or halt.last_good is None or not hosts:
        return None
    try:
        good, revision, at = _stand_in(prepared, source, app, halt.last_good)
    except ControllerError as error:  # then the sync holds the head without healing, and says why
        progress.notice(f"{app.name}: drift cannot be healed at {halt.last_good[:12]}: {error}")
        return None
    progress.step(f"{app.name}: {head[:12]} is halted; healing drift at {halt.last_good[:12]} on {', '.join(hosts)}")
    digest = at.digests[app.name]
    return AppRun(good, replace(request, limit=",".join(hosts)), kind, revision, store, progress, cancel, config,
                  digest, digest, heals=halt), at


def _pinned(config: Config, request: Request, store: Store, source: Source, prepared: Preparation,
            progress: Progress, cancel: Cancel, app: App, pin: Pin, head: Revision,
            windows: tuple[Window, ...]) -> AppResult:
    """A sync of an app a rollback pinned: the pinned revision's run on every host (drift healed there); the branch
    head waits. If that revision cannot run here, the run fails and nothing is applied."""
    running = frozenset(h.revision for h in store.hosts(app.name) if h.revision) - {pin.revision}
    try:
        there, revision, at = _stand_in(prepared, source, app, pin.revision, running)
    except ControllerError as error:
        return _failed(store, app.name, request, Kind.SYNC, head, ControllerError(
            error.reason, f"app {app.name} is pinned at {pin.revision[:12]}, which cannot run: {error.message}; "
            f"nothing applied (`controller unpin {app.name}` follows the branch again)"))
    progress.step(f"{app.name}: pinned at {pin.revision[:12]} by a rollback; {head.short} waits")
    digest = at.digests[app.name]
    return AppRun(there, request, Kind.SYNC, revision, store, progress, cancel, config, digest, digest,
                  looks=request.verifying, windows=windows, pinned=pin).reconcile(source, at)


def _stand_in(prepared: Preparation, source: Source, app: App, sha: str,
              previous: frozenset[str] = frozenset()) -> tuple[App, Revision, Preparation]:
    """``app`` as revision ``sha`` declares it, that revision, and its preparation beside the branch head's."""
    at, apps = prepared.at(sha, previous)
    revision = source.resolve(sha)
    there = apps.get(app.name)
    if there is None:
        raise ControllerError(Reason.CONFIG_INVALID, f"app {app.name} is not in gitops.yml at {sha[:12]}")
    return there, revision, at


def _rollback_target(config: Config, source: Source, store: Store, request: Request, head: Revision) -> Revision:
    """Where `controller rollback` puts ``request.app``: the revision named, or the newest that converged before
    the one applied now; an ancestor of the branch head either way. Nothing is recorded when there is none."""
    app = request.app
    assert app is not None  # the command names it
    if request.revision:
        target = source.resolve(request.revision)
    else:
        current = store.last_applied(app)
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


def _waiting(app: App, done: list[AppResult], store: Store, sha: str) -> str | None:
    """Why ``app`` may not be applied at ``sha`` yet: an app it depends on is not converged and healthy there (as
    this cycle left it, or, not reconciled in it, as the store has its hosts)."""
    results = {result.app: result for result in done}
    for upstream in app.depends_on:
        if (result := results.get(upstream)) is not None:
            if result.revision == sha and result.outcome in (Outcome.CONVERGED, Outcome.IN_SYNC, Outcome.UNVERIFIED) \
                    and not result.reason and not result.unhealthy:
                continue
            why = result.outcome.value + (f", {result.reason}" if result.reason else "") + \
                (", unhealthy" if result.unhealthy else "")
            return f"it depends on {upstream}, which is {why} at {sha[:12]}"
        hosts = store.hosts(upstream)
        if not hosts or any(h.revision != sha or h.state not in (HostState.IN_SYNC, HostState.UNVERIFIED)
                            or h.health is Health.UNHEALTHY for h in hosts):
            return f"it depends on {upstream}, which is not converged and healthy at {sha[:12]}"
    return None


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


def _failed(store: Store, app: str, request: Request, kind: Kind, revision: Revision | None,
            error: Failure) -> AppResult:
    run_id = store.start_run(app, revision.sha if revision else None, kind, request.trigger)
    store.finish_run(run_id, failure(error.reason), error.reason, error.message, False, {})
    return AppResult(app, None, run_id, failure(error.reason), error.reason, error.message,
                     previous=store.last_applied(app), revision=revision.sha if revision else None, kind=kind)


def _suspended(app: App, suspension: Suspension) -> AppResult:
    why = f": {suspension.reason}" if suspension.reason else ""
    return AppResult(app.name, app.policy, None, Outcome.SUSPENDED, None,
                     f"suspended since {suspension.since}{why}; not applied (`controller resume {app.name}`)",
                     kind=Kind.SYNC)


def _idle(config: Config, store: Store, head: Revision, override: bool) -> str | None:
    """Why a sync can return at once: every app's last check or sync was a sync at ``head`` that left
    nothing to do (no host behind, none failed) or was held by a maintenance window that has not ended (unless
    ``override``: --override-window), and no drift check is due."""
    newest = store.latest_sync()
    refused = newest is not None and newest.revision == head.sha and newest.reason is Reason.VERIFICATION_FAILED
    if config.source.verify.mode != "off" and refused:  # polls wait for the branch to move
        return (f"nothing to do: {config.source.branch} is still at {head.short}, which was refused for its "
                "signatures; waiting for a new commit")
    apps = store.active_apps()
    if not apps:
        return None
    held = _held_until(store) is not None and not override
    for app in apps:
        latest = store.latest(app)
        halt = store.halted(app, head.sha)
        pin = store.pinned(app)
        pinned = pin is not None and pin.rolled_back_from == head.sha
        # a head whose rollout halted is synced as the drift healing at its last good revision; a pinned app at its pin
        synced = pin.revision if pin is not None and pinned else head.sha if halt is None else halt.last_good
        # held by its own window that has not ended, or waiting for an app that is (its dependency is not ready until
        # that window ends), or for an approval nobody gave yet
        waits = latest is not None and (
            (latest.reason is Reason.WINDOW_CLOSED and _until(latest.summary) is not None and not override)
            or (latest.reason is Reason.DEPENDENCY_NOT_READY and held)
            or (latest.reason is Reason.APPROVAL_REQUIRED and store.approval(app, latest.revision or "") is None)
            or (latest.reason is Reason.PINNED and pinned))
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
