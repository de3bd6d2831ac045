"""ssh, sftp and scp wrappers that put given ``-o`` options first: ssh keeps the first value of an option, so
nothing a repository or a strategy adds after them can weaken them. Standard library only: the execution node's
worker (node_worker.py) is sent this module and writes its own."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

TOOLS = ("ssh", "sftp", "scp")


def option_args(options: Sequence[str]) -> str:
    """``options`` as ssh's ``-o`` arguments, quoted for a shell."""
    return " ".join(f"-o {shlex.quote(option)}" for option in options)


def write_wrappers(directory: Path, options: Sequence[str], tools: Sequence[str] = TOOLS) -> dict[str, Path]:
    """A wrapper for each of ``tools`` found on PATH (``directory`` left out) in ``directory``, by tool.

    ssh hands a ProxyJump's own ssh none of its ``-o`` options, and starts it as it was started
    itself (its argv[0]): the real ssh runs as plain ``ssh``, so that with ``directory`` first on
    PATH the connection to a jump host (or a ProxyCommand's ``ssh``) goes through the wrapper too.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    bash = shutil.which("bash") or "/bin/bash"  # for exec -a
    wrappers = {}
    for tool in tools:
        path = os.pathsep.join(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                               if p and Path(p).resolve() != directory.resolve())
        real = shutil.which(tool, path=path)
        if real is None:
            continue
        wrapper = directory / tool
        # written aside and renamed: a run that starts one of them meanwhile never sees half a file
        partial = directory / f".{tool}.{os.getpid()}"
        partial.write_text(f"#!{bash}\nexec -a {tool} {shlex.quote(real)} {option_args(options)} \"$@\"\n")
        partial.chmod(0o700)
        partial.replace(wrapper)
        wrappers[tool] = wrapper
    return wrappers
