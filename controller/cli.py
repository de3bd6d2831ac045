"""The ``controller`` command: sync, check, status, history, show."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from controller import __version__
from controller.config import Config, HostPort, find_config, load_config
from controller.errors import ControllerError, Interrupted, LockBusy
from controller.interrupt import Cancel
from controller.report.colour import Paint, wanted
from controller.report.documents import audit_document, detail_document, run_document, status_document
from controller.report.render import (
    audit_text,
    history_text,
    hosts_text,
    result_json,
    result_text,
    run_text,
    status_text,
)
from controller.report.review import review_markdown
from controller.report.terminal import TerminalProgress
from controller.run.planfile import PlanFile
from controller.run.recovery import recover
from controller.run.results import Actor, Request, Result
from controller.state.retention import GONE
from controller.state.store import Store
from controller.vocabulary import (
    EXIT_CODE_MEANINGS,
    RUNNING,
    ExitCode,
    Kind,
    Mode,
    Outcome,
    Reason,
    Trigger,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = "\b\nExit codes (check / sync):\n" + "\n".join(
    f"  {int(code):<3} {check}" + ("" if sync == "same" else f" / {sync}")
    for code, (check, sync) in EXIT_CODE_MEANINGS.items())


CONFIG_HELP = "Bastion config (default: $CONTROLLER_CONFIG, ./controller.yml, /etc/controller/controller.yml)."


def _host_port(ctx: click.Context, param: click.Parameter, value: str | None) -> HostPort | None:
    """HOST:PORT on the command line, parsed as the config parses it."""
    try:
        return None if value is None else HostPort.parse(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}, got {value!r}", ctx, param) from None


def config_option(func: F) -> F:
    # no envvar here: find_config reads $CONTROLLER_CONFIG after `controller --config FILE` is considered
    return click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)(func)


def output_options(func: F) -> F:
    """--output, for the commands that reconcile; markdown besides text, json and yaml."""
    func = click.option("--output", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
                        help="Write the report to FILE instead of stdout (e.g. a pull-request comment, cron's "
                        "report): whole, into a file beside it renamed over FILE, so no reader sees half.")(func)
    return format_options("text", "json", "yaml", "markdown")(func)


def format_options(*shapes: str) -> Callable[[F], F]:
    """--json and -o/--format SHAPE: text for people, json or yaml for programs (markdown: a review comment)."""
    said = {"markdown": "markdown: a review comment for a pull request, cut to 60,000 characters"}

    def add(func: F) -> F:
        func = click.option("--json", "as_json", is_flag=True, help="The same as -o json.")(func)
        return click.option("-o", "--format", "output_format", type=click.Choice(shapes), default=None,
                            help=f"{', '.join(shapes[:-1])} or {shapes[-1]} (default text)"
                            + "".join(f"; {said[s]}" for s in shapes if s in said) + ".")(func)
    return add


def _shape(as_json: bool, output_format: str | None) -> str:
    return "json" if as_json else output_format or "text"


def _render(shape: str, document: Callable[[], Any], text: Callable[[], str]) -> str:
    """``document()`` as JSON or YAML (its enums as the plain strings the JSON carries), or ``text()``."""
    if shape == "text":
        return text()
    if shape == "yaml":
        return yaml.safe_dump(json.loads(json.dumps(document())), sort_keys=False, allow_unicode=True)
    return json.dumps(document(), indent=2) + "\n"


def _emit(shape: str, document: Callable[[], Any], text: Callable[[], str]) -> None:
    click.echo(_render(shape, document, text), nl=False)


def run_options(func: F) -> F:
    """The options of every command that runs the pipeline (check, sync, verify)."""
    func = click.option("--trigger", type=click.Choice([t.value for t in Trigger]), default=Trigger.MANUAL.value,
                        hidden=True)(func)
    return click.option("--app", metavar="NAME", help="Only this app from gitops.yml.")(_watching_options(func))


def _watching_options(func: F) -> F:
    """How a run is waited for and followed (rollback too): --wait, --progress, -v, --accept-unverified."""
    for option in reversed([
        click.option("--wait", type=float, default=0, metavar="SECONDS",
                     help="Wait this long for another run to finish (default: do not wait)."),
        click.option("--progress/--no-progress", default=None,
                     help="Show live progress on stderr (default: when stderr is a terminal): each step, each "
                          "failure, and while Ansible is quiet a heartbeat with the elapsed time, the task under "
                          "way and how many of its hosts answered. Colour on a terminal unless NO_COLOR is set."),
        click.option("-v", "--verbose", is_flag=True,
                     help="Progress with every task result on every host, ok ones too (implies --progress)."),
        click.option("--accept-unverified", is_flag=True,
                     help="Exit 0, not 3, when the only open items are tasks check mode cannot verify."),
        config_option,
    ]):
        func = option(func)
    return func


def reconcile_options(func: F) -> F:
    """run_options, plus a revision to preview and where the report goes (check, sync)."""
    func = click.option("--revision", metavar="SHA", help="Reconcile this commit (or branch) instead of the "
                        "branch head, e.g. to preview a pull request.")(func)
    func = click.option("--limit", metavar="PATTERN",
                        help="Only these hosts, as Ansible's --limit (web1.staging, 'web*', 'web:!web3'), within "
                             "the app's own limit; the other hosts keep what the store says of them.")(func)
    return run_options(output_options(func))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="controller")
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """GitOps for plain servers: converge hosts over SSH to what Git says, with Ansible.

    \b
    The controller fetches the watched branch, decrypts its SOPS files into a
    private tmpfs workspace, syntax-checks each app's playbook, runs it in
    check+diff mode to find drift, and (sync) applies it, recording every run.

    \b
    Typical use:
      controller sync                 converge every app to the branch head
      controller check                report drift, change nothing (for cron)
      controller verify               one SSH look per host against its manifest
      controller watch                the daemon: webhooks, pushes, polls, drift schedule
      controller serve                the dashboard alone (watch serves it too)
      controller sync --dry-run       the same as check, as a sync would see it
      controller status               applied revision and drift state per app
      controller history              recent runs
      controller show RUN             one run's drift report with diffs
      controller suspend APP          leave an app alone (resume APP to undo)
      controller approve APP [REV]    let the next sync apply a revision (approval: required)
      controller rollback APP         put an app back to its previous revision, and pin it
      controller unpin APP            follow the branch again after a rollback
      controller version              every component's version, for a bug report
      controller completion bash      tab completion for bash, zsh or fish
    """
    ctx.obj = {"config": config_path}  # `controller --config FILE sync` as well as `sync --config FILE`


@cli.command(epilog=EXIT_CODES)
@reconcile_options
@click.option("--dry-run", is_flag=True, help="Check only: report what sync would change, change nothing.")
@click.option("--allow-rewrite", is_flag=True,
              help="Apply a revision that does not descend from the last applied one (rewrite, rollback).")
@click.option("--only-if-changed", is_flag=True,
              help="Return at once (exit 0) when the branch has not moved since the last sync and no drift "
                   "check is due (watch.drift_check_interval): the fast path for cron.")
@click.option("--force", is_flag=True, help="Apply to every host of the app, whatever the check found; a revision "
              "whose rollout halted (HealthCheckFailed) is retried too, in batches as gitops.yml says.")
@click.option("--override-window", is_flag=True,
              help="Apply even inside a maintenance window that holds applies (gitops.yml windows:); the run "
                   "records that it was applied inside the window, and the audit trail who did it and why "
                   "(--reason). Without it a held sync exits 5 and says until when.")
@click.option("--reason", default="", metavar="TEXT",
              help="Why, for the audit trail of what this sync does on purpose (--override-window).")
@click.option("--apply", "apply_detect", is_flag=True,
              help="With --app: apply that app even though its policy is detect, on purpose (recorded with its "
                   "policy; without --apply a detect app is only checked).")
@click.option("--verify-first", is_flag=True,
              help="Compare each host with its manifest first (as `controller verify`) and fully check only "
                   "the hosts that differ; at an unchanged revision a matching host needs no playbook run.")
@click.option("--plan", "plan_path", metavar="FILE",
              help="Apply only what this reviewed plan (check --save-plan) says: its revision must be the branch "
                   "head, and each app's check, run again first, must find exactly the changes it lists; "
                   "otherwise nothing is applied and the run says what differs (reason PlanStale).")
def sync(**options: Any) -> None:
    """Converge the servers to the branch head (apps with policy apply).

    Each app is checked first; the apply then runs on the hosts that need it:
    those the revision is new for (a new commit, or a host that missed a
    rollout), and those whose check found a change or a failure. Apps with
    policy detect are only checked (unless --apply --app NAME applies one on
    purpose); suspended apps (`controller suspend`) are skipped, and the
    output says so. With --revision (other than the branch
    head) or --dry-run it is a preview: checked and recorded, never applied,
    never the app's state. The hosts of groups an execution node serves
    (execution_nodes: in the bastion config) are checked and applied there.
    """
    if options["apply_detect"] and (options["app"] is None or options["dry_run"]):
        raise click.UsageError("--apply applies one app on purpose: name it with --app, and leave out --dry-run")
    if options["plan_path"] and any(options[o] for o in ("revision", "dry_run", "force", "verify_first", "limit")):
        raise click.UsageError("--plan applies the plan's own revision where its check still holds: leave out "
                               "--revision, --dry-run, --force, --verify-first and --limit")
    if options["limit"] and options["verify_first"]:
        raise click.UsageError("--verify-first looks at every host: leave out --limit, or --verify-first")
    _reconcile(Mode.SYNC, **options)


@cli.command(epilog=EXIT_CODES)
@reconcile_options
@click.option("--save-plan", "save_path", metavar="FILE",
              help="Write the revision checked and each change found (host, task, a digest of the masked diff; "
                   "no diff text) to FILE, for `controller sync --plan FILE` to apply once reviewed.")
@click.option("--ignore-drift", is_flag=True,
              help="In a preview's review comment (--revision with --format markdown), leave out the drift "
                   "already on the hosts that the revision does not cause (the preview checks the applied "
                   "revision too, to tell them apart).")
def check(**options: Any) -> None:
    """Report drift between Git and the servers; change nothing.

    Runs every app in check+diff mode and shows, per host and task, what an
    apply would change. Schedule it from cron: exit code 2 means drift, 3
    means only tasks that check mode cannot verify are open (they have not run
    at this revision on some host yet; where they have, the run is in sync and
    says when they last ran). With --revision
    (a pull request's commit or branch) it is a preview: never the app's state.
    """
    _reconcile(Mode.CHECK, dry_run=False, allow_rewrite=False, only_if_changed=False, force=False, verify_first=False,
               apply_detect=False, override_window=False, **options)


@cli.command(epilog=EXIT_CODES)
@run_options
@output_options
def verify(**options: Any) -> None:
    """Look at every host in one SSH round trip; fully check only where needed.

    Every full check or apply that finds a host in sync records its manifest:
    each path a file-type task (file, copy, template, lineinfile, ...) manages,
    with its checksum, mode, owner and group, and each package, service, user,
    group, mount, sysctl value and crontab its tasks manage, as the host has
    them, and how Ansible reached the host (inventory user, port, key, ssh
    arguments such as a jump host, become). verify fetches the branch and
    compares every host with its manifest in a single ssh command per host,
    reached the same way (no Ansible task, no module upload). A host that
    matches is *verified*: the output says how many paths and resources of how
    many tasks its manifest covers, and which tasks (commands, a package named
    by a wildcard) only the last full check, at the time shown, has seen. A
    host that differs, could not be looked at (ssh says why), has no manifest,
    or whose inputs changed (a new revision, the bastion config, vars or
    secrets, the Ansible version) gets a full check, limited to it, with
    Ansible's own diff, exactly as `check` reports it. verify never changes a
    host. Run it every few seconds from
    `watch` (watch.verify_interval) and keep a full check on a slower schedule.
    """
    _reconcile(Mode.VERIFY, revision=None, dry_run=False, allow_rewrite=False,
               only_if_changed=False, force=False, verify_first=False, apply_detect=False, override_window=False,
               **options)


def _reconcile(mode: Mode, *, config_path: str | None, as_json: bool, output_format: str | None, output: str | None,
               app: str | None, revision: str | None, wait: float, progress: bool | None, verbose: bool, trigger: str,
               dry_run: bool, allow_rewrite: bool, only_if_changed: bool, force: bool,
               accept_unverified: bool, verify_first: bool, apply_detect: bool, override_window: bool,
               ignore_drift: bool = False, plan_path: str | None = None, save_path: str | None = None,
               limit: str | None = None, rollback: bool = False, reason: str = "") -> None:
    config = _config(config_path, reaches_hosts=True)
    show = sys.stderr.isatty() if progress is None else progress
    cancel = Cancel()
    cancel.install()
    request = Request(mode, app, revision, dry_run, allow_rewrite, Trigger(trigger), only_if_changed=only_if_changed,
                      force=force, accept_unverified=accept_unverified, verify_first=verify_first,
                      apply_detect=apply_detect, plan=PlanFile.read(Path(plan_path)) if plan_path else None,
                      limit=limit, override_window=override_window, rollback=rollback, by=Actor(_who(), reason))
    from controller.run.cycle import run_cycle  # status, history and show never load the playbook stages
    live = TerminalProgress(show, verbose, sys.stderr)
    try:
        result = run_cycle(config, request, live, cancel, wait)
    finally:
        live.close()
    shape = _shape(as_json, output_format)
    paint = Paint(not output and wanted(sys.stdout))
    report = review_markdown(result, notes=live.notices, ignore_drift=ignore_drift) if shape == "markdown" else _render(
        shape, lambda: result_json(result), lambda: result_text(result, paint))
    if output:
        _write_whole(Path(output), report)
    else:
        click.echo(report, nl=False)
    if shape not in ("json", "yaml"):
        # a pipeline-level failure is the same message for every app: say it once
        for message in dict.fromkeys(a.message for a in result.apps
                                     if a.outcome in (Outcome.FAILED, Outcome.INTERRUPTED)):
            click.echo(f"controller: {message}", err=True)
        for suspended in (a for a in result.apps if a.outcome is Outcome.SUSPENDED):
            click.echo(f"controller: app {suspended.app} is {suspended.message}", err=True)
    if save_path:
        _save_plan(result, Path(save_path))
    sys.exit(int(result.exit_code))


def _save_plan(result: Result, path: Path) -> None:
    """Write the plan a reviewer approves; none for a check that did not finish on every app."""
    unfinished = [a.app for a in result.apps if a.check is None or a.outcome in (Outcome.FAILED, Outcome.INTERRUPTED)]
    if result.revision is None or not result.apps or unfinished:
        raise ControllerError(Reason.CONFIG_INVALID, f"--save-plan {path}: no plan saved, the check did not finish "
                              f"for {', '.join(unfinished) or 'any app'}")
    plan = PlanFile.of(result.revision.sha, {a.app: a.check for a in result.apps if a.check is not None})
    plan.write(path)
    count = sum(len(found) for found in plan.apps.values())
    click.echo(f"controller: plan of {result.revision.short} saved to {path} ({count} change(s)); once reviewed, "
               f"apply it with: controller sync --plan {path}", err=True)


def _write_whole(path: Path, text: str) -> None:
    """Write a report so that a reader (a monitoring check, the next cron line) never sees half of one:
    into a file beside it, then renamed over it."""
    part: Path | None = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
            part = Path(handle.name)
            handle.write(text)
        part.replace(path)
    except OSError as exc:
        if part is not None:
            part.unlink(missing_ok=True)
        raise ControllerError(Reason.CONFIG_INVALID, f"--output {path}: cannot write it: {exc.strerror}") from None


@cli.command()
@config_option
@format_options("text", "json", "yaml")
@click.option("--hosts", "per_host", is_flag=True, help="One line per host: its revision, state and since when.")
@click.argument("app", required=False)
def status(config_path: str | None, as_json: bool, output_format: str | None, per_host: bool,
           app: str | None) -> None:
    """Each app's (or APP's) applied revision, hosts at it, state, and the newest failure.

    \b
    A line reads like: staging  4e8d883a12f4  9/10  converged  ...  web3 at
    1a2b3c4d5e6f: unreachable since 10:42. When the newest revision was
    refused or failed, that is said beside the last good state; a suspended
    app says since when and why.
    """
    with _store(config_path) as store:
        if app:
            _known_app(store, app)
        statuses = [s for s in store.status() if app in (None, s.app)]
    _emit(_shape(as_json, output_format), lambda: [status_document(s) for s in statuses],
          lambda: hosts_text(statuses) if per_host else status_text(statuses))


@cli.command()
@config_option
@format_options("text", "json", "yaml")
@click.option("--app", metavar="NAME", help="Only this app's runs.")
@click.option("--kind", type=click.Choice([k.value for k in Kind]), help="Only runs of this kind.")
@click.option("--outcome", type=click.Choice([*(o.value for o in Outcome), RUNNING]),
              help="Only runs that ended so (running: not yet).")
@click.option("--trigger", type=click.Choice([t.value for t in Trigger]), help="Only runs started so.")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True,
              help="How many runs (or audit entries).")
@click.option("--audit", is_flag=True,
              help="The audit trail instead: what people did to apps (approve, rollback, unpin, suspend, resume, "
                   "sync --override-window, the dashboard's buttons), who (the local user, or the dashboard "
                   "token's name and address), when, why, and the run it started.")
def history(config_path: str | None, as_json: bool, output_format: str | None, app: str | None, kind: str | None,
            outcome: str | None, trigger: str | None, limit: int, audit: bool) -> None:
    """Recent runs, newest first; e.g. `history --kind verify --outcome drifted`; `--audit`: who did what.

    A run the same as the one before it (a verify every 10 s of a fleet in sync) takes its place:
    `in-sync, 8640 times since 23h ago` (JSON: folded, first_started). Unremarkable runs go after
    retention.max_age or beyond retention.max_runs; applies, failures and runs that found something new (a
    state change, a new diff) stay.
    """
    if audit and (kind or outcome or trigger):
        raise click.UsageError("--audit lists actions, not runs: leave out --kind, --outcome and --trigger")
    shape = _shape(as_json, output_format)
    with _store(config_path) as store:
        if audit:
            entries = store.audit(app, limit)
            return _emit(shape, lambda: [audit_document(e) for e in entries], lambda: audit_text(entries))
        runs = store.runs(app, limit, kind=kind, outcome=outcome, trigger=trigger)
    _emit(shape, lambda: [run_document(r) for r in runs], lambda: history_text(runs))


@cli.command()
@config_option
@format_options("text", "json", "yaml")
@click.argument("run_id", metavar="RUN", type=int)
def show(config_path: str | None, as_json: bool, output_format: str | None, run_id: int) -> None:
    """One run: its outcome, per-host results and drift report with diffs."""
    with _store(config_path) as store:
        run = store.run(run_id)
    if run is None:
        raise ControllerError(Reason.NOT_FOUND, f"no run {run_id} in the state store (see `controller history`; "
                                                f"{GONE})")
    found = run
    _emit(_shape(as_json, output_format), lambda: detail_document(found), lambda: run_text(found))


@cli.command(epilog="""\b
Exit codes:
  0   stopped by SIGTERM or SIGINT (a run in progress is stopped and unwound first)
  1   configuration error (bad config, listener address in use, unreadable or shared webhook secret,
      a known_hosts file that ssh.host_key_checking accept-new cannot write)
  70  internal error (a bug: the traceback is printed)""")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request.")
def watch(config_path: str | None, verbose: bool) -> None:
    """Keep the servers matching Git until stopped: the daemon for systemd.

    \b
    Reconciles (the same cycle as `sync`, under the same lock) when:
      - a signed push webhook arrives (watch.listen: POST /hooks/PROVIDER for
        github, gitlab, gitea (and Forgejo), gogs, bitbucket-server,
        bitbucket-cloud, azure-devops, generic, flux; a secret per provider
        in watch.webhooks),
      - the source is a bare repository on this host and its branch moves,
      - every watch.poll_interval seconds the branch has moved,
      - an app's scheduled drift check is due (watch.drift_check_interval or
        watch.drift_check_cron): drift is corrected (policy apply) or reported.
    Pushes arriving together make one run; a failing cycle is retried with
    backoff; suspended apps are left alone. GET /healthz and /metrics
    (Prometheus, read from the state store at each scrape) are served on the
    same listener, with the dashboard. Logs go to stderr.

    With a PostgreSQL store two bastions share (state.url), one watch leads
    and reconciles; the other stands by, its dashboard read-only, and takes
    over within seconds of the leader's death (docs/deploy.md, "Two bastions").
    """
    from controller.daemon.watch import Watch  # the daemon's HTTP and watchdog imports stay out of cron's fast path

    config = _config(config_path, reaches_hosts=True)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", force=True,
                        level=logging.DEBUG if verbose else logging.INFO)
    cancel = Cancel()
    cancel.install()
    Watch(config, cancel).run()


@cli.command(epilog="""\b
Exit codes:
  0   stopped by SIGTERM or SIGINT (a sync started from a page is unwound first)
  1   configuration error (listener address in use or open to others without ui.token_file)
  70  internal error (a bug: the traceback is printed)""")
@config_option
@click.option("--listen", metavar="HOST:PORT", callback=_host_port,
              help="Where to answer (default: watch.listen, else 127.0.0.1:8080).")
@click.option("-v", "--verbose", is_flag=True, help="Also log every HTTP request.")
def serve(config_path: str | None, listen: HostPort | None, verbose: bool) -> None:
    """Serve the dashboard alone, for a bastion that runs `sync` from cron.

    \b
    Pages (the same facts as JSON under /api/):
      /                 every app: state, applied revision, hosts at it,
                        drifted / failed / unreachable, last and next check
      /apps/NAME        its hosts and recent runs; Sync now (a detect app:
                        Check now, Apply now), Suspend, Resume
      /runs/ID          one run: per-host results, masked drift report
      /history          every run, by app, outcome and trigger
      /metrics          Prometheus, read from the state store at each scrape
    `controller watch` serves the same pages on watch.listen; use serve when
    nothing else listens. It reads the state store that sync and check write;
    its actions run the same cycle under the same lock (trigger "ui"), so a
    busy lock is said at once. Off loopback it refuses to start unless
    ui.token_file names a token; with one, every page asks for it (a login
    form, or Authorization: Bearer TOKEN). Details: docs/dashboard.md.
    """
    from controller.daemon.watch import LogProgress
    from controller.web.dashboard import serve as serve_dashboard  # the HTTP and template imports stay out of cron

    config = _config(config_path, reaches_hosts=True)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", force=True,
                        level=logging.DEBUG if verbose else logging.INFO)
    cancel = Cancel()
    cancel.install()
    serve_dashboard(config, listen or config.watch.listen or HostPort("127.0.0.1", 8080), cancel, LogProgress())


@cli.command()
@format_options("text", "json", "yaml")
def version(as_json: bool, output_format: str | None) -> None:
    """This controller's version and every component's a run depends on (ansible-core, ansible-runner,
    mitogen, sops, age, git, Python): what to paste into a bug report."""
    from controller.report.versions import versions, versions_text  # starts three tools: only when asked

    found = versions()
    _emit(_shape(as_json, output_format), lambda: found, lambda: versions_text(found))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL, e.g. `source <(controller completion bash)` in ~/.bashrc, or
    `controller completion fish > ~/.config/fish/completions/controller.fish`."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the three choices are click's own
    click.echo(completer(cli, {}, "controller", "_CONTROLLER_COMPLETE").source())


@cli.command()
@config_option
@click.argument("app")
@click.option("--reason", default="", metavar="TEXT",
              help="Why (shown by status and sync). Suspending again keeps since when, and the reason unless "
                   "a new one is given.")
def suspend(config_path: str | None, app: str, reason: str) -> None:
    """Stop reconciling APP: watch leaves it alone and sync skips it (check still reports)."""
    with _store(config_path) as store:
        _known_app(store, app)
        before = store.suspend(app, _who(), reason)
    kept = reason or (before.reason if before else "")
    why = f" ({kept})" if kept else ""
    said = f"already suspended since {before.since}" if before else "suspended"
    click.echo(f"{app} {said}{why}: `controller resume {app}` to reconcile it again")


@cli.command()
@config_option
@click.argument("app")
@click.argument("revision", required=False)
@click.option("--reason", default="", metavar="TEXT", help="Why (kept with the approval, shown by history --json).")
def approve(config_path: str | None, app: str, revision: str | None, reason: str) -> None:
    """Let the next sync apply REVISION of APP (gitops.yml approval: required).

    REVISION (a sha or its first characters) defaults to the one APP's latest
    sync checked and held for approval. An approval names that revision only:
    a later commit waits for its own. Recorded with who (this user) and when.
    """
    with _store(config_path) as store:
        _known_app(store, app)
        sha = _approvable(store, app, revision)
        approved = store.approve(app, sha, _who(), reason)
    click.echo(f"{app}: {sha[:12]} approved by {approved.who} at {approved.at}: the next sync applies it")


def _who() -> str:
    """The local user running the command (from the system, not the environment), and who ran sudo if one did."""
    name = pwd.getpwuid(os.getuid()).pw_name
    via = os.environ.get("SUDO_USER")
    return f"{via} (sudo as {name})" if via and via != name else name


def _approvable(store: Store, app: str, revision: str | None) -> str:
    """The full sha ``revision`` names, among those reconciled here; the one waiting for approval by default."""
    if revision is None:
        waiting = store.awaiting_approval(app)
        if waiting is None:
            raise ControllerError(Reason.NOT_FOUND, f"no revision of {app} waits for approval (its latest sync did "
                                  "not hold one): name the revision, `controller approve APP REVISION`")
        return waiting
    if not re.fullmatch(r"[0-9a-fA-F]{4,40}", revision):
        raise ControllerError(Reason.NOT_FOUND, f"{revision!r} is not a revision: give its sha (4 characters or more)")
    found = store.revisions_named(app, revision)
    if len(found) != 1:
        said = "names several revisions" if found else f"is no revision a sync of {app} checked yet (it checks first)"
        raise ControllerError(Reason.NOT_FOUND, f"{revision!r} {said}")
    return found[0]


@cli.command(epilog=EXIT_CODES)
@click.argument("app")
@click.option("--to", "revision", metavar="REVISION",
              help="The revision to go back to (a sha, its first characters, or a ref): one that comes before the "
                   "revision APP runs now on the branch. Default: the newest that converged before it.")
@click.option("--reason", default="", metavar="TEXT", help="Why (kept with the pin, shown by status and the run).")
@_watching_options
@output_options
def rollback(app: str, revision: str | None, reason: str, **options: Any) -> None:
    """Put APP back to an earlier revision now, and pin it there.

    \b
    The revision passes every gate a sync's does (signatures, decryption,
    syntax check, the check) and is applied to every host of APP that runs
    something else, in batches as gitops.yml says at that revision, inside a
    maintenance window too, under policy detect too; no approval is asked.
    APP is then pinned (unless the rollout halted): sync and watch heal drift
    at the pinned revision (exit 5, held) and leave the branch head alone
    until the branch moves past it (a fix or a `git revert` is pushed) or
    `controller unpin APP`. `controller status` shows the pin and the `git
    revert` that makes Git say what the hosts run.
    """
    _reconcile(Mode.SYNC, app=app, revision=revision, rollback=True, reason=reason,
               trigger=Trigger.ROLLBACK.value, dry_run=False, allow_rewrite=False, only_if_changed=False, force=False,
               verify_first=False, apply_detect=True, override_window=False, **options)


@cli.command()
@config_option
@click.argument("app")
@click.option("--reason", default="", metavar="TEXT", help="Why (kept in the audit trail: history --audit).")
def unpin(config_path: str | None, app: str, reason: str) -> None:
    """Let APP follow the branch again after `controller rollback`: the next sync (or watch's next poll) applies the
    branch head."""
    with _store(config_path) as store:
        _known_app(store, app)
        pin = store.unpin(app, _who(), reason)
    if pin is None:
        click.echo(f"{app} was not pinned: nothing to do")
    else:
        click.echo(f"{app}: no longer pinned at {pin.revision[:12]}; the next sync applies the head of the branch")


@cli.command()
@config_option
@click.argument("app")
@click.option("--reason", default="", metavar="TEXT", help="Why (kept in the audit trail: history --audit).")
def resume(config_path: str | None, app: str, reason: str) -> None:
    """Reconcile APP again after `controller suspend` (at the next sync or watch cycle)."""
    with _store(config_path) as store:
        _known_app(store, app)
        lifted = store.resume(app, _who(), reason)
    click.echo(f"resumed {app}" if lifted else f"{app} was not suspended: nothing to do")


def _known_app(store: Store, app: str) -> None:
    """Refuse a name no run has used (a typo), once any app has been reconciled here."""
    known = store.apps()
    if known and app not in known:
        raise ControllerError(Reason.NOT_FOUND, f"no app {app!r} has been reconciled here (apps: "
                              f"{', '.join(known)}); check the name")


@contextmanager
def _store(config_path: str | None) -> Iterator[Store]:
    """Open the configured state store for the inspection commands, after cleaning up a killed run."""
    config = _config(config_path)
    with Store.of(config) as store:
        recover(config, store)
        yield store


def _config(config_path: str | None, *, reaches_hosts: bool = False) -> Config:
    given = config_path or (click.get_current_context().find_root().obj or {}).get("config")
    config = load_config(find_config(given))
    if reaches_hosts:  # refused before anything starts, not at the first host it meets
        from controller.ansible.job import writable_known_hosts
        writable_known_hosts(config)
    return config


def main() -> None:
    """Entry point: user errors are one line on stderr; bugs keep their traceback."""
    logging.basicConfig(format="controller: %(message)s", level=logging.WARNING)
    os.umask(0o077)  # state, cache, lock, known_hosts: nobody else's to read, whatever the caller's umask
    try:
        cli.main(standalone_mode=False)
    except (ControllerError, Interrupted) as error:
        for line in error.message.splitlines() or [""]:  # a config with several problems: one line each
            click.echo(f"controller: {line}", err=True)
        sys.exit(ExitCode.LOCKED if isinstance(error, LockBusy) else ExitCode.ERROR)
    except click.exceptions.Abort:
        click.echo("controller: aborted", err=True)
        sys.exit(ExitCode.ERROR)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.USAGE)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        click.echo("controller: internal error (a bug); please report it with the traceback above", err=True)
        sys.exit(ExitCode.BUG)
