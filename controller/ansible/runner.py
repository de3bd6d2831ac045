"""The one wrapper around ansible-runner and ansible-playbook: typed results, no raw events."""

from __future__ import annotations

import difflib
import errno
import json
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.ansible.job import Job
from controller.ansible.nodes import run_on_node
from controller.ansible.placement import HERE, place
from controller.ansible.playbook import PASS_MARKER, PASSES
from controller.ansible.playbook import command as playbook_command
from controller.ansible.results import Connection, HostSummary, PlayRun, TaskResult, Touched
from controller.ansible.targets import targets_of
from controller.errors import ControllerError, Interrupted
from controller.interrupt import Cancel
from controller.process import first_line, reaped, run, stop_children
from controller.secrets.redact import Redactor
from controller.source.apps import App
from controller.vocabulary import Phase, Reason, TaskStatus

UNVERIFIED_MARKER = "CONTROLLER-UNVERIFIED"
CHANGES_NOTHING = "changes-nothing"  # said with the marker of a task written with changed_when: false
CONNECTION_MARKER = "CONTROLLER-CONNECTION"
POLL_SECONDS = 0.5  # how often ansible-runner asks whether to stop (its default, 5 s, delays a SIGTERM)
# what ssh and ansible say when a host cannot be trusted or stops answering
HOST_KEY_MISMATCH = ("host key verification failed", "remote host identification has changed",
                     "unrecognized or mismatching host key")
HOST_KEY_REFUSED = "host key mismatch: its key is not the one in known_hosts; nothing was sent"
TASK_TIMED_OUT = ("failed to execute in the expected time frame", "timed out after")
# ssh's ConnectTimeout (no TCP answer, or no banner from a hung sshd) and mitogen's: ansible.timeout, not task_timeout
CONNECT_TIMED_OUT = ("connection timed out", "timed out during banner exchange", "operation timed out")
# said beside a check-mode failure on a host where an earlier task of the same play would change something
MAY_DEPEND = "may depend on a change not yet applied"
SYNTAX_CHECK_SECONDS = 300


class Stopped(Interrupted):
    """The playbook was stopped by a signal, or (a check) because a newer revision arrived; ``partial`` holds
    what it had done by then."""

    def __init__(self, message: str, partial: PlayRun, reason: Reason = Reason.INTERRUPTED) -> None:
        super().__init__(message)
        self.partial = partial
        self.reason = reason


class OutOfTime(ControllerError):
    """The playbook ran past ``ansible.run_timeout`` and was stopped; ``partial`` holds what it had done."""

    def __init__(self, message: str, partial: PlayRun) -> None:
        super().__init__(Reason.TIMED_OUT, message)
        self.partial = partial


def syntax_check(app: App, project: Path, job: Job, redactor: Redactor) -> None:
    """``ansible-playbook --syntax-check`` of the app's playbook in a process of its own; raise SyntaxCheckFailed
    with the cause (Playbook.syntax_check runs it as the first pass of the process that then checks)."""
    try:
        run([*playbook_command(), "--syntax-check", *job.args, "-i", app.inventory, app.playbook],
            reason=Reason.SYNTAX_CHECK_FAILED, what=_syntax_failed(app), env=job.env, cwd=project,
            redact=lambda text: _relative(redactor.text(text), project), timeout=SYNTAX_CHECK_SECONDS)
    except ControllerError as exc:
        raise ControllerError(exc.reason, exc.message) from None


def _syntax_failed(app: App) -> str:
    return f"app {app.name}: {app.playbook} failed the syntax check"


def run_playbook(app: App, project: Path, private_dir: Path, job: Job, *, check: bool, redactor: Redactor,
                 on_task: Callable[[TaskResult], None], on_start: Callable[[str, str], None], cancel: Cancel,
                 limit: str | None = None) -> PlayRun:
    """One pass of the app's playbook in a process of its own (Playbook.play says how)."""
    with Playbook(app, project, private_dir, job, redactor=redactor, cancel=cancel, passes=False) as playbook:
        return playbook.play(check=check, on_task=on_task, on_start=on_start, limit=limit)


class Playbook:
    """The app's playbook at one checkout, run pass by pass: a check, then the applies decided on after it (a
    rollout's batches). Where every host is this bastion's own, each pass after the first runs in the first one's
    ansible-playbook process, which keeps its start-up and the hosts' interpreters; where some run on execution
    nodes, or ``passes`` is false, each pass is a run of its own. Leaving it ends the process."""

    def __init__(self, app: App, project: Path, private_dir: Path, job: Job, *, redactor: Redactor, cancel: Cancel,
                 passes: bool = True) -> None:
        self.app, self.project, self.private_dir, self.job = app, project, private_dir, job
        self.redactor, self.cancel, self.passes = redactor, cancel, passes
        # what runs in other threads (parts on execution nodes, a process that runs passes) is told in this one:
        # the store's connection is this thread's
        self.told: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self.resident: _Resident | None = None

    def __enter__(self) -> Playbook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def play(self, *, check: bool, on_task: Callable[[TaskResult], None], on_start: Callable[[str, str], None],
             limit: str | None = None, stale: Callable[[], str | None] = lambda: None) -> PlayRun:
        """One pass in check+diff or apply mode, streaming each task result to ``on_task`` and each task's start
        on a host to ``on_start`` (task, host).

        ``limit`` replaces the app's own limit: the hosts that need an apply, found by a check under that limit.
        ``stale`` names a newer revision once one arrives: a check then stops at once (it changes nothing), an
        apply never (a stop between two tasks would lose the handlers a change notified).
        """
        phase = Phase.CHECK if check else Phase.APPLY
        if self.cancel():  # a stop that came while another app's playbook ran (apps at once): this one never starts
            raise Interrupted(f"app {self.app.name}: interrupted before its {phase} started")
        settings = self._settings(check, limit)
        job = self.job
        placed = {HERE: []} if job.nodes is None else place(self.app.inventory, settings["limit"], job.nodes.served(),
                                                             project=self.project, env=job.env, args=job.args)
        if set(placed) <= {HERE}:  # nothing for a node (or no host at all): the playbook as it always ran
            placed = {HERE: []}
        stale = stale if check else lambda: None
        if not self.passes or set(placed) != {HERE}:
            return self._apart(phase, settings, placed, _Stop(self.cancel, job.run_timeout, stale), on_task, on_start)
        collected = self._collector(check, on_task, on_start, threaded=True)
        with self.cancel.deferred():
            resident = self.resident
            if resident is not None and resident.thread.is_alive():
                resident.next_pass(_pass_arguments(resident.arguments, check, settings["limit"]), collected,
                                   job.run_timeout, stale)
            else:
                resident = self._start(settings, _Stop(self.cancel, job.run_timeout, stale), collected)
            self._wait(resident.thread, until=resident.pass_ended)
        return self._ended(phase, {HERE: collected}, resident.stop, resident.ended, resident.broke)

    def syntax_check(self) -> None:
        """``--syntax-check`` of the app's playbook as the first pass of the process that then runs the check and
        the applies (one start-up of Ansible fewer); raise as syntax_check() does, the process ended."""
        # no limit, as a syntax check of its own has none: each later pass is given its own
        settings = {**self._settings(True, None), "limit": None}
        settings["cmdline"] = f"--syntax-check {settings['cmdline']}"
        said = _Said(self.redactor, self.project)
        with self.cancel.deferred():
            resident = self._start(settings, _Stop(self.cancel, SYNTAX_CHECK_SECONDS, lambda: None), said)
            self._wait(resident.thread, until=resident.pass_ended)
        if self.cancel():  # a signal while it ran only set the flag: the run stops here, whatever the pass said
            self.close()
            raise Interrupted(f"app {self.app.name}: interrupted during its syntax check")
        if resident.broke:
            self.close()
            raise resident.broke[0]
        if resident.over and resident.code == "0":
            return
        self.close()
        if resident.stop.expired:
            detail = f"{playbook_command()[0]} did not finish within {SYNTAX_CHECK_SECONDS}s"
        else:
            detail = first_line("\n".join(said.lines)) or f"exit status {resident.code or resident.ended}"
        raise ControllerError(Reason.SYNTAX_CHECK_FAILED, f"{_syntax_failed(self.app)}: {detail}")

    def _start(self, settings: dict[str, Any], stop: _Stop, collected: _Collector | _Said) -> _Resident:
        """The process that runs the passes, started on the pass ``settings`` say (signals deferred by the caller)."""
        self.resident = _Resident(settings, self.project / self.app.inventory, self.project, self.private_dir, stop,
                                  collected, self.told, self.cancel)
        return self.resident

    def close(self) -> None:
        """End the process that runs the passes, if one does."""
        resident, self.resident = self.resident, None
        if resident is not None:
            with self.cancel.deferred():  # a signal now is a stop after the run: what it did is told whole
                resident.end()

    def _settings(self, check: bool, limit: str | None) -> dict[str, Any]:
        job = self.job
        phase = Phase.CHECK if check else Phase.APPLY
        return {
            "playbook": self.app.playbook,
            "limit": limit or self.app.limit,  # a plan's hosts come from a check that already honoured app.limit
            "cmdline": " ".join(("--check --diff" if check else "--diff", job.cmdline)),
            "envvars": dict(job.env),
            "ident": str(phase),
            "quiet": True,
            "suppress_ansible_output": True,
            "fact_cache_type": "memory",  # facts stay in the run (ansible-runner would set a jsonfile cache)
        }

    def _collector(self, check: bool, on_task: Callable[[TaskResult], None], on_start: Callable[[str, str], None],
                   *, threaded: bool) -> _Collector:
        def later(callback: Callable[..., None]) -> Callable[..., None]:
            return lambda *args: self.told.put((callback, args))

        job = self.job
        return _Collector(check=check, redactor=self.redactor, project=self.project,
                          on_task=later(on_task) if threaded else on_task,
                          on_start=later(on_start) if threaded else on_start,
                          task_timeout=job.env.get("ANSIBLE_TASK_TIMEOUT", "?"),
                          connect_timeout=job.env.get("ANSIBLE_TIMEOUT"))  # None: the repository's ansible.cfg says

    def _wait(self, *threads: threading.Thread, until: Callable[[], bool] = lambda: False) -> None:
        """Tell here what the threads told, until ``until`` or until they have all ended and told everything."""
        while not until():
            try:
                callback, args = self.told.get(timeout=0.1)
            except queue.Empty:
                if not any(thread.is_alive() for thread in threads) and self.told.empty():
                    return
                continue
            callback(*args)

    def _apart(self, phase: Phase, settings: dict[str, Any], placed: dict[str, list[str]], stop: _Stop,
               on_task: Callable[[TaskResult], None], on_start: Callable[[str, str], None]) -> PlayRun:
        """The pass as a run of its own here, and beside it on each execution node that has hosts of it."""
        app, job, check = self.app, self.job, phase is Phase.CHECK
        parts: dict[str, _Collector] = {}
        ended = ""  # how ansible-runner ended here, for a run that never got to its recap
        broke: list[BaseException] = []

        def part(where: str, hosts: list[str]) -> None:
            nonlocal ended
            collected = parts[where] = self._collector(check, on_task, on_start, threaded=len(placed) > 1)
            if where == HERE:
                # the limit names the hosts placed here, and the implicit localhost where the app's own limit did
                # not leave it out (a play of `hosts: localhost` is the bastion's)
                mine = ",".join([*hosts, *([] if settings["limit"] else ["localhost"])])
                local = {**settings, "limit": mine} if len(placed) > 1 else settings
                ended = _run_here(local, self.project / app.inventory, self.project, self.private_dir,
                                  collected.handle, stop, self.cancel)
                return
            assert job.nodes is not None
            try:
                why = run_on_node(job.nodes, where, self.private_dir.with_name(f"{self.private_dir.name}@{where}"),
                                  {**settings, "inventory": f"project/{app.inventory}", "limit": ",".join(hosts)},
                                  collected.handle, stop, lambda: collected.connections)
            except ControllerError as error:
                why = f"execution node {where}: {error.message}"
            if collected.stats is None and not stop.fired:  # the playbook never got to its recap there
                why = why or f"execution node {where}: {' '.join(collected.tail) or 'the playbook ended early'}"
                collected.cut_off(hosts, self.redactor.text(why))

        def guarded(where: str, hosts: list[str]) -> None:
            try:
                part(where, hosts)
            except BaseException as error:  # raised again in the calling thread, once every part has ended
                broke.append(error)

        with self.cancel.deferred():
            if len(placed) == 1:
                [(where, hosts)] = placed.items()
                part(where, hosts)
            else:
                import_runner()
                threads = [threading.Thread(target=guarded, args=(where, hosts)) for where, hosts in placed.items()]
                for thread in threads:
                    thread.start()
                self._wait(*threads)
        return self._ended(phase, parts, stop, ended, broke)

    def _ended(self, phase: Phase, parts: dict[str, _Collector], stop: _Stop, ended: str,
               broke: list[BaseException]) -> PlayRun:
        """What the pass did, or why it did not end as a pass does."""
        if broke:
            raise broke[0]
        name = self.app.name
        partial = _joined(phase is Phase.CHECK, list(parts.values()))
        if self.cancel():
            raise Stopped(f"app {name}: interrupted, the playbook was stopped", partial)
        if stop.newer is not None:
            raise Stopped(f"app {name}: the check was stopped: superseded by {stop.newer}, which is reconciled "
                          "next; nothing applied", partial, Reason.SUPERSEDED)
        if stop.expired:
            raise OutOfTime(f"app {name}: the {phase} did not finish within "
                            f"ansible.run_timeout ({self.job.run_timeout:.0f}s) and was stopped", partial)
        here = parts.get(HERE)
        if here is not None and here.stats is None:
            detail = " ".join(here.tail) or f"ansible-runner ended {ended or 'before the pass ended'}"
            raise ControllerError(Reason.RUNNER_FAILED, f"app {name}: {detail}")
        return partial


class _Resident:
    """The ansible-playbook process that runs a Playbook's passes here, its ansible-runner in a thread: the first
    pass from its command line, each later one told through a FIFO once the one before it has ended."""

    def __init__(self, settings: dict[str, Any], inventory: Path, project: Path, private_dir: Path, stop: _Stop,
                 collected: _Collector | _Said,
                 told: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]], cancel: Cancel) -> None:
        """Start the process on its first pass (``settings``, as ansible-runner takes them)."""
        private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fifo = private_dir / "passes"
        self.fifo.unlink(missing_ok=True)  # a process before this one's, gone
        os.mkfifo(self.fifo, 0o600)
        self.stop, self.collected, self.told = stop, collected, told
        self.over = False   # the current pass has ended (set in the calling thread, in order with what it told)
        self.code = ""      # the exit code of the pass that ended last, as the process said it
        self.ended = ""     # how ansible-runner ended, once it has
        self.broke: list[BaseException] = []
        settings = {**settings, "envvars": {**settings["envvars"], PASSES: str(self.fifo)}}
        self.thread = threading.Thread(target=self._run, args=(settings, inventory, project, private_dir, cancel),
                                       daemon=True)
        self.thread.start()

    @property
    def arguments(self) -> list[str]:
        """The first pass's arguments to ``controller-ansible-playbook``, as ansible-runner made them."""
        assert self.stop.command is not None
        return self.stop.command[len(reaped(playbook_command())):]

    def next_pass(self, arguments: list[str], collected: _Collector, seconds: float,
                  stale: Callable[[], str | None]) -> None:
        self.collected, self.over = collected, False
        self.stop.arm(seconds, stale)
        self._tell(json.dumps(arguments))

    def end(self) -> None:
        """No more passes: the process ends (at once, if a pass was cut short by an error here)."""
        if self.over:
            self._tell("")
        elif self.stop.command is not None:
            stop_children(self.stop.command)
        self.thread.join()

    def _run(self, settings: dict[str, Any], inventory: Path, project: Path, private_dir: Path,
             cancel: Cancel) -> None:
        try:
            self.ended = _run_here(settings, inventory, project, private_dir, self._handle, self.stop, cancel)
        except BaseException as error:  # raised again in the calling thread
            self.broke.append(error)

    def _handle(self, event: dict[str, Any]) -> bool:
        if event.get("event") == "verbose" and event.get("stdout", "").startswith(PASS_MARKER):
            self.told.put((self._pass_over, (event["stdout"].partition("\t")[2].strip(),)))
            return False
        return self.collected.handle(event)

    def pass_ended(self) -> bool:
        """The current pass has ended (as the calling thread was told, after all it told of the pass)."""
        return self.over

    def _pass_over(self, code: str) -> None:
        self.over, self.code = True, code
        self.stop.arm(math.inf, lambda: None)  # waiting for the next pass: only a signal stops it

    def _tell(self, line: str) -> None:
        # the process opens the FIFO once a pass has ended; one that has gone never will
        while self.thread.is_alive():
            try:
                fifo = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                time.sleep(0.005)
                continue
            try:
                os.write(fifo, line.encode())
            finally:
                os.close(fifo)
            return


def _pass_arguments(first: list[str], check: bool, limit: str | None) -> list[str]:
    """A later pass's arguments: the first pass's (ansible-runner's) with this pass's mode and limit."""
    arguments = list(first)
    for mode in ("--syntax-check", "--check"):
        if mode in arguments:
            arguments.remove(mode)
    if "--limit" in arguments:
        at = arguments.index("--limit")
        del arguments[at:at + 2]
    return [*(["--check"] if check else []), *(["--limit", limit] if limit else []), *arguments]


def import_runner() -> None:
    """Import ansible-runner in this thread, before threads that run playbooks start: Python 3.11 can fail with
    KeyError when two threads import a package's modules for the first time at once (bpo-38884)."""
    # imported on first use: ansible-runner brings pexpect and part of Ansible with it, which status, history,
    # show and a sync that finds nothing to do never need
    import ansible_runner.config.runner
    import ansible_runner.runner
    import ansible_runner.streaming  # noqa: F401  (the execution nodes' Processor)


def _run_here(settings: dict[str, Any], inventory: Path, project: Path, private_dir: Path,
              handle: Callable[[dict[str, Any]], bool], stop: _Stop, cancel: Cancel) -> str:
    """The playbook for the hosts this bastion reaches itself; how ansible-runner ended."""
    from ansible_runner.config.runner import RunnerConfig  # on first use (import_runner)
    from ansible_runner.runner import Runner

    config = RunnerConfig(private_data_dir=str(private_dir), project_dir=str(project),
                          inventory=str(inventory), **settings)
    config.prepare()
    # prepare() resets this from env/settings (False without one; a settings= dict is dropped too), and the
    # "stdout" and "stderr" artifacts would then hold the raw --diff text, secrets unmasked
    config.suppress_output_file = True
    # ansible-runner seeds the job env from os.environ and stores it in the "command" artifact
    config.env = {k: v for k, v in config.env.items() if k not in os.environ or k in settings["envvars"]}
    # ours in place of the ansible-playbook script (playbook.py); the playbook and all it starts (workers,
    # mitogen, ssh masters) die with us, SIGKILL included
    program, *arguments = config.command
    assert program == "ansible-playbook", config.command
    config.command = stop.command = reaped([*playbook_command(), *arguments])
    config.pexpect_timeout = POLL_SECONDS
    runner = Runner(config, event_handler=handle, cancel_callback=stop)
    if not cancel():
        runner.run()
    return f"{runner.status} (rc {runner.rc})"


def _joined(check: bool, collected: list[_Collector]) -> PlayRun:
    """One PlayRun of the parts run here and on execution nodes."""
    return PlayRun(check=check,
                   tasks=tuple(task for c in collected for task in c.tasks),
                   hosts=tuple(sorted((h for c in collected for h in c.stats or ()), key=lambda h: h.host)),
                   touched=tuple(touch for c in collected for touch in c.touched),
                   connections={host: how for c in collected for host, how in c.connections.items()})


class _Said:
    """What a pass that plays no task (a syntax check) printed: its lines, masked, the workspace's paths relative."""

    def __init__(self, redactor: Redactor, project: Path) -> None:
        self.redactor, self.project = redactor, project
        self.lines: list[str] = []

    def handle(self, event: dict[str, Any]) -> bool:
        if event.get("event") == "verbose":
            self.lines.append(_relative(self.redactor.text(event.get("stdout", "")), self.project))
        return False


class _Collector:
    """Turns ansible-runner events into TaskResults as they stream; keeps no raw event."""

    def __init__(self, *, check: bool, redactor: Redactor, project: Path, on_task: Callable[[TaskResult], None],
                 on_start: Callable[[str, str], None], task_timeout: str, connect_timeout: str | None) -> None:
        self.check = check
        self.on_start = on_start
        self.task_timeout = task_timeout
        self.connect_timeout = connect_timeout
        self.redactor = redactor
        self.project = project
        self.on_task = on_task
        self.tasks: list[TaskResult] = []
        self.skipped: dict[tuple[str, str], int] = {}  # (host, task uuid) -> index in tasks
        self.stats: tuple[HostSummary, ...] | None = None
        self.touched: list[Touched] = []
        self.connections: dict[str, Connection] = {}
        self.tail: deque[str] = deque(maxlen=3)
        self.pending: set[str] = set()  # hosts where a task of the current play would change something

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_stats":
            self.stats = _summaries(data)
        elif kind == "playbook_on_play_start":
            self.pending.clear()
        elif kind == "runner_on_start":
            self.on_start(self._task_name(data), str(data.get("host", "")))
        elif kind in _STATUS_OF:
            result = self._result(kind, data)
            if result.status is TaskStatus.SKIPPED:
                self.skipped[(result.host, str(data.get("task_uuid")))] = len(self.tasks)
            elif result.status is TaskStatus.CHANGED and self.check:
                self.pending.add(result.host)
            elif result.status is TaskStatus.FAILED and self.check and result.host in self.pending:
                # check mode simulates: a service whose package is not installed yet fails there
                result = replace(result, may_depend=True,
                                 message=f"{MAY_DEPEND}: {result.message}" if result.message else MAY_DEPEND)
            if result.status is not TaskStatus.OK:
                self.tasks.append(result)
            if result.status.reached:
                targets = targets_of(result.action, data.get("res") or {})
                self.touched.append(Touched(result.host, result.task, result.action, targets))
            self.on_task(result)
        elif kind == "verbose" and event.get("stdout", "").startswith(CONNECTION_MARKER):
            _, host, told = event["stdout"].rstrip("\r\n").split("\t", 2)
            # the store keeps it (a manifest): never a secret, even one passed in ssh arguments
            self.connections[host] = Connection.from_dict({key: self._masked(value)
                                                           for key, value in json.loads(told).items()})
        elif kind == "verbose" and event.get("stdout", "").startswith(UNVERIFIED_MARKER):
            _, host, uuid, said = event["stdout"].rstrip("\r\n").split("\t")
            index = self.skipped.pop((host, uuid), None)
            if index is not None and said == CHANGES_NOTHING:
                # its author's word: no open item, but nothing a verify can see either, as after an apply
                skipped = self.tasks[index]
                self.touched.append(Touched(host, skipped.task, skipped.action, ()))
            elif index is not None:
                self.tasks[index] = replace(self.tasks[index], status=TaskStatus.UNVERIFIED)
        elif kind == "verbose" and "ERROR" in event.get("stdout", ""):
            self.tail.append(_relative(self.redactor.text(event["stdout"].strip()), self.project))
        return False  # never write job_events to disk: they hold diffs and secrets

    def cut_off(self, hosts: list[str], why: str) -> None:
        """The hosts of an execution node that could not run them: unreachable, saying why."""
        self.stats = tuple(HostSummary(host, unreachable=1) for host in hosts)
        for host in hosts:
            result = TaskResult(host=host, task="execution node", action="", status=TaskStatus.UNREACHABLE,
                                message=why)
            self.tasks.append(result)
            self.on_task(result)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        return self.redactor.text(value) if isinstance(value, str) else value

    def _result(self, kind: str, data: dict[str, Any]) -> TaskResult:
        res = data.get("res") or {}
        status = _STATUS_OF[kind]
        if status is TaskStatus.OK and res.get("changed"):
            status = TaskStatus.CHANGED
        elif status is TaskStatus.FAILED and data.get("ignore_errors"):
            status = TaskStatus.OK
        message = "" if status.reached else str(res.get("msg", ""))
        if status.broken:
            # a loop's own msg is "All items completed" or "One or more items failed": the items say why
            items = [r for r in res.get("results", []) if isinstance(r, dict)]
            message = next((str(r.get("msg", "")) for r in items if r.get("unreachable") or r.get("failed")),
                           message)
            everything = " ".join([message, *(str(r.get("msg", "")) for r in items)])
            status, message = self._classify(status, message, everything, timed_out="timedout" in res)
        return TaskResult(
            host=str(data.get("host", "")),
            task=self._task_name(data),
            action=str(data.get("task_action", "")),
            status=status,
            diff=_relative(self.redactor.text(render_diff(res)), self.project) if status is TaskStatus.CHANGED else "",
            message=_relative(self.redactor.text(message), self.project)[:2000],
        )


    def _task_name(self, data: dict[str, Any]) -> str:
        task = data.get("task", "")
        return self.redactor.text(f"{data['role']} : {task}" if data.get("role") else str(task))

    def _classify(self, status: TaskStatus, message: str, everything: str,
                  timed_out: bool) -> tuple[TaskStatus, str]:
        """A host that cannot be trusted or stopped answering is unreachable, said in plain words: a task
        that ran out of ansible.task_timeout is told apart from a connection that never came up."""
        lowered = everything.lower()
        if any(sign in lowered for sign in HOST_KEY_MISMATCH):
            return TaskStatus.UNREACHABLE, HOST_KEY_REFUSED
        if timed_out or any(sign in lowered for sign in TASK_TIMED_OUT):
            return TaskStatus.UNREACHABLE, f"timed out: no answer within ansible.task_timeout ({self.task_timeout}s)"
        if any(sign in lowered for sign in CONNECT_TIMED_OUT):
            within = f" within ansible.timeout ({self.connect_timeout}s)" if self.connect_timeout else ""
            return TaskStatus.UNREACHABLE, f"could not connect{within}: {message.strip()}"
        return status, message


class _Stop:
    """ansible-runner's cancel callback: a signal, the run's deadline, or a newer revision (a check's);
    stops the playbook's tree first."""

    def __init__(self, cancel: Cancel, seconds: float, stale: Callable[[], str | None]) -> None:
        self.cancel = cancel
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self.stale = stale
        self.newer: str | None = None
        self.command: list[str] | None = None  # the reaped command this run started

    def arm(self, seconds: float, stale: Callable[[], str | None]) -> None:
        """From now on, a pass that may take ``seconds`` and stops once ``stale`` names a newer revision."""
        self.deadline, self.stale, self.expired, self.newer = time.monotonic() + seconds, stale, False, None

    @property
    def fired(self) -> bool:
        """The run was stopped (a signal, its deadline or a newer revision)."""
        return self.cancel() or self.expired or self.newer is not None

    def __call__(self) -> bool:
        self.expired = self.expired or time.monotonic() > self.deadline
        self.newer = self.newer or self.stale()
        if self.fired:
            # ansible-runner SIGKILLs the process group; the reaper must get to kill the rest first: every reaper
            # when the whole process stops, else only this run's (another app's playbook may run beside it)
            if self.cancel() or self.command is not None:
                stop_children(None if self.cancel() else self.command)
            return True
        return False


_STATUS_OF = {"runner_on_ok": TaskStatus.OK, "runner_on_failed": TaskStatus.FAILED,
              "runner_on_unreachable": TaskStatus.UNREACHABLE, "runner_on_skipped": TaskStatus.SKIPPED}


def _summaries(stats: dict[str, Any]) -> tuple[HostSummary, ...]:
    hosts: set[str] = set()
    for key in ("ok", "changed", "failures", "dark", "skipped", "processed"):  # Ansible's own words
        hosts.update((stats.get(key) or {}).keys())

    def count(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    return tuple(HostSummary(host, count("ok", host), count("changed", host), count("failures", host),  # Ansible's
                             count("dark", host), count("skipped", host)) for host in sorted(hosts))


# a file task's times: `touch` moves them on every run, so they say nothing a reviewer or drift report needs
VOLATILE = frozenset({"atime", "mtime"})


def render_diff(res: Mapping[str, Any]) -> str:
    """A unified diff of a task result's ``diff`` entries (loop items included)."""
    entries: list[Any] = []
    for source in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
        diff = source.get("diff")
        entries.extend(diff if isinstance(diff, list) else [diff] if diff else [])
    return "".join(_one_diff(entry) for entry in entries if isinstance(entry, dict))


def _one_diff(entry: Mapping[str, Any]) -> str:
    if entry.get("prepared"):
        return str(entry["prepared"]).rstrip("\n") + "\n"
    before, after = entry.get("before", ""), entry.get("after", "")
    if isinstance(before, dict) or isinstance(after, dict):
        before_d = before if isinstance(before, dict) else {}
        after_d = after if isinstance(after, dict) else {}
        path = after_d.get("path") or before_d.get("path") or ""
        return "".join(f"{path}: {key}: {before_d.get(key)} -> {after_d.get(key)}\n"
                       for key in sorted((set(before_d) | set(after_d)) - VOLATILE)
                       if key != "path" and before_d.get(key) != after_d.get(key))
    before_header = str(entry.get("before_header", "before"))
    after_header = str(entry.get("after_header", "after"))
    if "/ansible-local-" in after_header:
        # the template module names its throwaway local render; the destination is what matters
        after_header = f"{before_header if before_header != 'before' else ''} (from Git)".strip()
    lines = difflib.unified_diff(
        str(before).splitlines(keepends=True), str(after).splitlines(keepends=True),
        fromfile=before_header, tofile=after_header)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _relative(text: str, project: Path) -> str:
    # messages name files by their path in the repository, not in the throwaway workspace
    return text.replace(f"{project}/", "").replace(str(project), ".")
