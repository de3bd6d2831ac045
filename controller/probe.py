"""The one round trip of ``verify``: a single ssh command per host that stats and hashes a list of paths.

No Ansible task and no module upload: one short stdlib-only Python program, run with ``python3 -c``
(through ``sudo -n`` when the login user is not root and may use it, as Ansible's become would),
over ssh with the bastion's host key checking. All hosts are asked at once.
"""

from __future__ import annotations

import ast
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.ansible_config import PASSED_THROUGH, host_key_options
from controller.config import Config
from controller.manifest import Connection, Entry
from controller.process import run_side_by_side
from controller.runner import HOST_KEY_MISMATCH, HOST_KEY_REFUSED

# Runs on the host: for every path (its arguments), what is there now, as one Python literal on stdout.
# Not json and not hashlib: importing them was more than half of the program's time (json pulls in re;
# hashlib loads OpenSSL), and it runs on every host at every verify.
REMOTE = r"""
import grp, os, pwd, stat, sys
try:
    from _sha1 import sha1
except ImportError:
    from hashlib import sha1
def name(get, ident):
    try:
        return get(ident)[0]
    except KeyError:
        return str(ident)
out = []
for path in sys.argv[1:]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        out.append({"kind": "absent"})
        continue
    except OSError as exc:
        out.append({"kind": "error", "target": exc.strerror})
        continue
    entry = {"mode": "%04o" % stat.S_IMODE(st.st_mode), "owner": name(pwd.getpwuid, st.st_uid),
             "group": name(grp.getgrgid, st.st_gid)}
    if stat.S_ISLNK(st.st_mode):
        entry = {"kind": "link", "target": os.readlink(path)}
    elif stat.S_ISDIR(st.st_mode):
        entry["kind"] = "directory"
    elif stat.S_ISREG(st.st_mode):
        entry["kind"] = "file"
        digest = sha1()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            entry["sha1"] = digest.hexdigest()
        except OSError as exc:
            entry = {"kind": "error", "target": exc.strerror}
    else:
        entry["kind"] = "other"
    out.append(entry)
print(repr(out))
"""


@dataclass(frozen=True)
class Looked:
    """What one host has at the asked paths, or why it could not be asked (``error``)."""

    entries: tuple[Entry, ...] = ()
    error: str = ""


def look(config: Config, asked: Mapping[str, tuple[Connection, Sequence[str]]]) -> dict[str, Looked]:
    """Ask every host in ``asked`` (host -> connection, paths) what it has at those paths, all at once."""
    commands = {host: _ssh(config, connection, paths) for host, (connection, paths) in asked.items()}
    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    done = run_side_by_side(commands, env=env, timeout=config.ansible.timeout + 30)
    return {host: _looked(asked[host][1], finished.code, finished.out, finished.err)
            for host, finished in done.items()}


def _ssh(config: Config, connection: Connection, paths: Sequence[str]) -> list[str]:
    program = shlex.join(["python3", "-I", "-S", "-c", REMOTE, *paths])
    # as root, or through sudo when the login user may use it without a password (what become would
    # do), else as is: sudo refusing exits 1, and so does a program that failed, which then runs again
    remote = f'if [ "$(id -u)" != 0 ]; then sudo -n {program}; s=$?; [ $s != 1 ] && exit $s; fi; exec {program}'
    options = [*host_key_options(config), "BatchMode=yes", f"ConnectTimeout={round(config.ansible.timeout)}",
               "LogLevel=ERROR", "ControlMaster=no", "ControlPath=none"]
    if config.ssh.verify_key_exchange:
        # offered first, OpenSSH's own list after it: a host that lacks it still answers
        options.append(f"KexAlgorithms=^{config.ssh.verify_key_exchange}")
    argv = ["ssh", "-T", *(arg for option in options for arg in ("-o", option))]
    if config.ssh.private_key_file:
        argv += ["-i", config.ssh.private_key_file]
    if connection.port:
        argv += ["-p", str(connection.port)]
    if connection.user:
        argv += ["-l", connection.user]
    return [*argv, "--", connection.address, remote]


def _looked(paths: Sequence[str], code: int | None, out: str, err: str) -> Looked:
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    if code is None:
        return Looked(error=f"timed out: {err}")
    if code == 255 and any(sign in err.lower() for sign in HOST_KEY_MISMATCH):
        return Looked(error=HOST_KEY_REFUSED)
    if code != 0:
        return Looked(error=f"could not look: {lines[-1] if lines else f'exit status {code}'}"[:300])
    try:
        found = ast.literal_eval(out.strip())  # literals only: the host's answer is data, never code
        entries = tuple(Entry(path=path, **entry) for path, entry in zip(paths, found, strict=True))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as exc:
        return Looked(error=f"could not read the host's answer: {exc}")
    return Looked(entries=entries)
