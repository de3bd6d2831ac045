"""The one place that runs subprocesses and turns their failures into our errors.

Every tool runs under ``reaper.py``: whatever it starts dies with it, and with the controller.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ControllerError
from controller.reaper import children
from controller.vocabulary import Reason

REAPER = Path(__file__).with_name("reaper.py")
GUARD = Path(__file__).with_name("guard.py")
NOT_FOUND = 127
STOP_GRACE = 5.0  # seconds the reaper gets to kill its tree before it is killed itself
_REAPERS: set[int] = set()  # the reapers this process started and has not waited for yet


def reaped(argv: Sequence[str]) -> list[str]:
    """``argv`` run under the reaper, for callers that spawn it themselves (ansible-runner)."""
    return [sys.executable, "-I", "-S", str(REAPER), str(os.getpid()), *argv]


def run(argv: Sequence[str], *, reason: Reason, what: str, env: Mapping[str, str],
        cwd: Path | None = None, timeout: float = 300,
        redact: Callable[[str], str] = lambda text: text,
        explain: Callable[[str], str] | None = None) -> str:
    """Run ``argv`` and return its stdout; on failure raise one line naming ``what`` failed and why.

    stdout is returned untouched (it may hold decrypted data); stderr is redacted before
    it reaches any message, because tools have echoed plaintext in their errors. ``explain``
    picks the line that says why from a tool's stderr (default: :func:`first_line`).
    """
    return answer(argv, answers=(0,), reason=reason, what=what, env=env, cwd=cwd, timeout=timeout, redact=redact,
                  explain=explain)[1]


def answer(argv: Sequence[str], *, answers: Collection[int], reason: Reason, what: str, env: Mapping[str, str],
           cwd: Path | None = None, timeout: float = 60, redact: Callable[[str], str] = lambda text: text,
           explain: Callable[[str], str] | None = None) -> tuple[int, str]:
    """Run a command whose exit status is an answer (``git cat-file -e``: 0 yes, 1 no); its status and stdout
    when the status is one of ``answers``. Any other (a timeout, a corrupt cache, a tool not installed)
    raises as :func:`run` does: a question that could not be asked is never taken for a "no"."""
    with _spawn(argv, env, cwd, stdout=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ControllerError(reason, f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from None
    _judge(argv, proc.returncode, err, answers, reason=reason, what=what, redact=redact, explain=explain)
    return proc.returncode, out.decode(errors="replace")


@dataclass(frozen=True)
class Finished:
    """How one of several commands run side by side ended: exit status (None: timed out) and output."""

    code: int | None
    out: str
    err: str


SIDE_BY_SIDE_BATCH = 200   # commands per reaper: two pipes each, well inside the default 1024 open files
_STATUS = "\x1estatus "   # each command's exit status, appended to its stderr by the fan-out shell


def run_side_by_side(commands: Mapping[str, Sequence[str]], *, env: Mapping[str, str],
                     timeout: float, cwd: Path | None = None) -> dict[str, Finished]:
    """Run every command at once and wait for all (``timeout`` seconds at most, per batch of 200); never raises for a
    command's failure: each caller tells its own failures apart.

    One reaper and one bash start them all (a reaper per command would cost more than the command
    when it is an ssh of a few milliseconds), each with its own stdout and stderr pipes.
    """
    finished: dict[str, Finished] = {}
    keys = list(commands)
    for start in range(0, len(keys), SIDE_BY_SIDE_BATCH):
        batch = {key: commands[key] for key in keys[start:start + SIDE_BY_SIDE_BATCH]}
        finished.update(_fan_out(batch, env, time.monotonic() + timeout, timeout, cwd))
    return finished


def _fan_out(commands: Mapping[str, Sequence[str]], env: Mapping[str, str], deadline: float,
             timeout: float, cwd: Path | None) -> dict[str, Finished]:
    reads: dict[int, tuple[str, int]] = {}  # read end -> (command, 0 stdout | 1 stderr)
    writes: list[int] = []
    lines = []
    for key, argv in commands.items():
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        reads.update({out_r: (key, 0), err_r: (key, 1)})
        writes += [out_w, err_w]
        lines.append(f"{{ {shlex.join(argv)} >&{out_w} 2>&{err_w}; printf '{_STATUS}%s' $? >&{err_w}; }} &")
    script = "\n".join([*lines, "wait"])
    output: dict[str, list[bytearray]] = {key: [bytearray(), bytearray()] for key in commands}
    # bash, not sh: dash redirects only file descriptors 0-9; the script on stdin, since one argument
    # may not exceed 128 KiB (background commands read /dev/null, not the script)
    proc = subprocess.Popen(reaped(["bash", "-s"]), env=dict(env), cwd=cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=writes)
    try:
        for fd in writes:
            os.close(fd)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(script.encode())
        with selectors.DefaultSelector() as selector:
            for fd in reads:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map() and (left := deadline - time.monotonic()) > 0:
                for ready, _ in selector.select(left):
                    chunk = os.read(ready.fd, 65536)
                    if chunk:
                        key, stream = reads[ready.fd]
                        output[key][stream] += chunk
                    else:
                        selector.unregister(ready.fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))  # the reaper makes sure nothing is left
    finally:
        if proc.poll() is None:
            stop(proc)
        for fd in reads:
            os.close(fd)
    finished = {}
    for key, (out, err) in output.items():
        text, _, status = err.decode(errors="replace").rpartition(_STATUS)
        if status.isdigit():
            finished[key] = Finished(int(status), out.decode(errors="replace"), text)
        else:
            finished[key] = Finished(None, "", f"no answer within {timeout:.0f}s")
    return finished


@contextmanager
def stream(argv: Sequence[str], *, env: Mapping[str, str],
           cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with its stdout as a pipe to read; leaving early (or an exception) kills it at once."""
    with _spawn(argv, env, cwd, stdout=subprocess.PIPE) as proc:
        yield proc


def finish(proc: subprocess.Popen[bytes], argv: Sequence[str], *, reason: Reason, what: str,
           timeout: float = 60) -> None:
    """Wait for a streamed command that was read to its end; raise like :func:`run` when it failed."""
    assert proc.stderr is not None
    err = proc.stderr.read()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise ControllerError(reason, f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from None
    _judge(argv, code, err, (0,), reason=reason, what=what, redact=lambda text: text, explain=None)


@contextmanager
def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
           stdout: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(reaped(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE)
    _REAPERS.add(proc.pid)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc)
        _REAPERS.discard(proc.pid)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def guarded(base: Path, prefix: str) -> Iterator[None]:
    """While inside, a guard process (guard.py) wipes ``base/prefix*`` the moment this process dies, SIGKILL
    included; leaving tells it all is well. Not under a reaper: it has to outlive us."""
    guard = subprocess.Popen([sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), str(base), prefix],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # a Ctrl-C for the terminal's group is not for it
    assert guard.stdin is not None
    try:
        yield
    finally:
        with contextlib.suppress(BrokenPipeError), guard.stdin:
            guard.stdin.write(b".")
        guard.wait()


def stop_children(only: Sequence[str] | None = None) -> None:
    """Ask every reaper this process started (``only``: the one running exactly that reaped command) to kill its
    tree, and wait until they are gone.

    Also catches a child whose Popen a signal interrupted (so nobody holds its handle), and one
    still between fork and exec: the SIGTERM stays pending across exec and ends it there. Other
    children are not ours to stop: a shell that runs ``controller check > >(tee log)`` execs the
    controller with its ``tee`` as a child, and the workspace guard must outlive us.
    """
    # the reapers _spawn started are in the registry; ansible-runner's (spawned by pexpect) are found by their
    # command line, which _started_here reads again while it is empty (a reaper mid-exec)
    mine = list(_REAPERS | {pid for pid in children(os.getpid()) if _started_here(pid)})
    if only is not None:  # one playbook of several under way (apps at once): the others go on
        wanted = [arg.encode() for arg in only]
        mine = [pid for pid in mine if _command_line(pid) == wanted]
    for pid in mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline and any(_running(pid) for pid in mine):
        time.sleep(0.02)
    for pid in mine:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _started_here(pid: int) -> bool:
    """A reaper of this process (``reaped``'s command line), or a fork of this process not yet exec'd."""
    argv = _command_line(pid)
    return argv[1:5] == [b"-I", b"-S", bytes(REAPER), str(os.getpid()).encode()] or argv == _own_command_line()


def _command_line(pid: int) -> list[bytes]:
    """``pid``'s arguments. Right after an exec /proc/PID/cmdline reads empty for a moment (on a busy machine,
    long enough for a stop right after a start to miss a reaper): an empty one is read again, up to a second."""
    deadline = time.monotonic() + 1
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        if raw or not _running(pid) or time.monotonic() > deadline:
            return raw.split(b"\0")[:-1]
        time.sleep(0.005)


@functools.cache
def _own_command_line() -> list[bytes]:
    return Path("/proc/self/cmdline").read_bytes().split(b"\0")[:-1]


def _running(pid: int) -> bool:
    """Alive and not a zombie (our zombies are reaped by whoever spawned them)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask a reaper to kill its tree and exit; kill it if it does not within the grace period."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _judge(argv: Sequence[str], code: int, err: bytes, answers: Collection[int], *, reason: Reason, what: str,
           redact: Callable[[str], str], explain: Callable[[str], str] | None) -> None:
    """Raise one line naming ``what`` failed and why, unless ``code`` is one of ``answers``."""
    if code == NOT_FOUND and err.decode(errors="replace").startswith(f"{argv[0]}: "):
        raise ControllerError(reason, f"{what}: {argv[0]} is not installed")
    if code not in answers:
        detail = (explain or first_line)(redact(err.decode(errors="replace")))
        raise ControllerError(reason, f"{what}: {detail or f'exit status {code}'}")


def first_line(text: str) -> str:
    """The most informative single line of a tool's error output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:400]
    return lines[0][:400] if lines else ""
