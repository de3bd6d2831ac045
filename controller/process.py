"""The one place that runs subprocesses and turns their failures into our errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from controller.errors import ControllerError
from controller.outcomes import Reason


def run(argv: Sequence[str], *, reason: Reason, what: str, env: Mapping[str, str],
        cwd: Path | None = None, timeout: float = 300,
        redact: Callable[[str], str] = lambda text: text) -> str:
    """Run ``argv`` and return its stdout; on failure raise one line naming ``what`` failed and why.

    stdout is returned untouched (it may hold decrypted data); stderr is redacted before
    it reaches any message, because tools have echoed plaintext in their errors.
    """
    try:
        done = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ControllerError(reason, f"{what}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ControllerError(reason, f"{what}: {argv[0]} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        detail = first_line(redact(done.stderr.decode(errors="replace")))
        raise ControllerError(reason, f"{what}: {detail or f'exit status {done.returncode}'}",
                              ) from _ExitStatus(done.returncode)
    return done.stdout.decode(errors="replace")


class _ExitStatus(Exception):
    """Carries a failed command's exit status for callers that tell failures apart."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit status {code}")
        self.code = code


def exit_status(error: BaseException) -> int | None:
    """The exit status behind a ControllerError raised by :func:`run`, if there was one."""
    cause = error.__cause__
    return cause.code if isinstance(cause, _ExitStatus) else None


def first_line(text: str) -> str:
    """The most informative single line of a tool's error output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:400]
    return lines[0][:400] if lines else ""
