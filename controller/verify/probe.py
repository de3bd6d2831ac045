"""The one round trip of ``verify``: a single ssh command per host that reads what its tasks manage.

No Ansible task and no module upload: one short stdlib-only Python program, run with ``python3 -c``
over ssh, reached as Ansible reached the host (address, port, user, key, ssh arguments such as a
jump host, privilege escalation: ``manifest.Connection``) behind the bastion's host key checking.
It stats and hashes paths and reads packages, services, users, groups, mounts, sysctl values and
crontabs. All hosts are asked at once.
"""

from __future__ import annotations

import ast
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.ansible.job import PASSED_THROUGH, host_key_options, ssh_wrappers
from controller.ansible.results import Connection
from controller.ansible.runner import HOST_KEY_MISMATCH, HOST_KEY_REFUSED
from controller.config import Config
from controller.process import run_side_by_side
from controller.source.apps import HealthCheck
from controller.verify.health import CheckResult, HostHealth, budget
from controller.verify.manifest import Entry, Resource

# Runs on the host: for every target (its arguments: a path, or KIND:NAME), what is there now, as one
# Python literal on stdout. Not json and not hashlib: importing them was more than half of the
# program's time (json pulls in re; hashlib loads OpenSSL), and it runs on every host at every verify.
# What only some hosts are asked (a service's state, rpm) starts a process; the rest reads files.
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
def digest(path):
    d = sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            d.update(block)
    return d.hexdigest()
def path_entry(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"kind": "absent"}
    except OSError as exc:
        return {"kind": "error", "target": exc.strerror}
    entry = {"mode": "%04o" % stat.S_IMODE(st.st_mode), "owner": name(pwd.getpwuid, st.st_uid),
             "group": name(grp.getgrgid, st.st_gid)}
    if stat.S_ISLNK(st.st_mode):
        return {"kind": "link", "target": os.readlink(path)}
    if stat.S_ISDIR(st.st_mode):
        entry["kind"] = "directory"
    elif stat.S_ISREG(st.st_mode):
        entry["kind"] = "file"
        try:
            entry["sha1"] = digest(path)
        except OSError as exc:
            return {"kind": "error", "target": exc.strerror}
    else:
        entry["kind"] = "other"
    return entry
def run(argvs):
    import subprocess
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=env, universal_newlines=True) for a in argvs]
    return [(p.communicate(timeout=30)[0], p.returncode) for p in procs]
def packages(names):
    try:
        with open("/var/lib/dpkg/status", "rb") as f:
            status = f.read()
    except FileNotFoundError:
        found = {}
        for line in run([["rpm", "-q", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n", "--"] + names])[0][0].splitlines():
            package, _, version = line.partition("\t")
            if version:
                found[package] = ",".join(filter(None, (found.get(package), version)))
        return [{"version": found[n]} if n in found else {} for n in names]
    out = []
    for wanted in names:
        package, _, arch = wanted.partition(":")
        needle, at, state = b"Package: " + package.encode() + b"\n", -1, {}
        while True:
            at = status.find(needle, at + 1)
            if at < 0:
                break
            if at and status[at - 1] != 10:
                continue
            end = status.find(b"\n\n", at)
            fields = dict(line.split(b": ", 1) for line in status[at:end if end > 0 else None].split(b"\n")
                          if b": " in line and not line.startswith(b" "))
            if fields.get(b"Status", b"").endswith(b" installed") and (
                    not arch or fields.get(b"Architecture", b"").decode() == arch):
                state = {"version": fields.get(b"Version", b"").decode()}
                break
        out.append(state)
    return out
def services(names):
    if os.path.isdir("/run/systemd/system"):
        shown = run([["systemctl", "show", "--property=LoadState,ActiveState,UnitFileState", "--"] + names])[0][0]
        out = []
        for block in shown.strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            out.append({} if fields.get("LoadState") == "not-found" else
                       {"active": fields.get("ActiveState", ""), "enabled": fields.get("UnitFileState", "")})
        return out if len(out) == len(names) else [{"error": "systemctl show: unexpected output"}] * len(names)
    # SysV: the init script's own status (LSB: 0 running, 1-3 not running); enabled: a start link
    links = set()
    for level in "2345":
        try:
            links.update(n[3:] for n in os.listdir("/etc/rc%s.d" % level) if n.startswith("S"))
        except OSError:
            pass
    scripts = ["/etc/init.d/" + n for n in names]
    present = [n for n, s in zip(names, scripts) if os.path.isfile(s)]
    codes = dict(zip(present, (code for _, code in run([["/etc/init.d/" + n, "status"] for n in present]))))
    return [{"running": {0: "yes", 1: "no", 2: "no", 3: "no"}.get(codes[n], "unknown (%s)" % codes[n]),
             "enabled": "yes" if n in links else "no"} if n in codes else {} for n in names]
def users(names):
    out, members = [], None
    for n in names:
        try:
            pw = pwd.getpwnam(n)
        except KeyError:
            out.append({})
            continue
        if members is None:
            members = grp.getgrall()
        out.append({"uid": str(pw.pw_uid), "group": name(grp.getgrgid, pw.pw_gid), "home": pw.pw_dir,
                    "shell": pw.pw_shell, "groups": ",".join(sorted(g.gr_name for g in members if n in g.gr_mem))})
    return out
def groups(names):
    out = []
    for n in names:
        try:
            out.append({"gid": str(grp.getgrnam(n).gr_gid)})
        except KeyError:
            out.append({})
    return out
def table(path, value):
    found = {}
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4 and not fields[0].startswith("#"):
                    found[fields[1]] = value(fields)
    except OSError:
        pass
    return found
def mounts(paths):
    mounted = table("/proc/mounts", lambda f: " ".join((f[0], f[2], f[3])))
    fstab = table("/etc/fstab", lambda f: " ".join(f[:1] + f[2:]))
    out = []
    for p in paths:
        where = p.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
        state = {"mounted": mounted.get(where, ""), "fstab": fstab.get(where, "")}
        out.append(state if any(state.values()) else {})
    return out
def sysctls(keys):
    out = []
    for key in keys:
        try:
            with open("/proc/sys/" + (key if "/" in key else key.replace(".", "/"))) as f:
                out.append({"value": " ".join(f.read().split())})
        except FileNotFoundError:
            out.append({})
        except OSError as exc:
            out.append({"error": exc.strerror})
    return out
def crontabs(names):
    out = []
    for n in names:
        n = n or name(pwd.getpwuid, os.geteuid())
        state = {}
        for spool in ("/var/spool/cron/crontabs/", "/var/spool/cron/"):
            if os.path.isfile(spool + n):
                state = {"sha1": digest(spool + n)}
                break
        out.append(state)
    return out
def command(what, timeout, status):
    import signal, subprocess
    # a session of its own: at the timeout the whole group goes, grandchildren holding the pipe too
    proc = subprocess.Popen(["/bin/sh", "-c", what], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, "no answer within %gs" % timeout
    if proc.returncode == 0:  # what a passing check printed is no news, and kept nowhere
        return True, "exit status 0"
    said = out.decode("utf-8", "replace").strip().splitlines()
    # the whole last line (up to 4 KiB): the controller masks secrets in it before it shortens it
    return False, "exit status %d" % proc.returncode + (": " + said[-1][-4096:] if said else "")
def http(what, timeout, status):
    import urllib.error, urllib.request
    # never through a proxy: the check asks the host itself
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(what, timeout=timeout) as answer:
            code = answer.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, getattr(reason, "strerror", None) or str(reason)
    return (code == int(status) if status else 200 <= code < 300), "HTTP %d" % code
def tcp(what, timeout, status):
    import socket
    host, _, port = what.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return False, exc.strerror or str(exc) or type(exc).__name__
    return True, "accepted a connection"
def health(spec):
    import time
    kind, timeout, retries, delay, status, what = spec.split("\t", 5)
    attempts = int(retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            passed, said = {"command": command, "http": http, "tcp": tcp}[kind](what, float(timeout), status)
        except Exception as exc:
            passed, said = False, "%s: %s" % (type(exc).__name__, exc)
        if passed or attempt == attempts:
            return (passed, said, attempt)
        time.sleep(float(delay))
READ = {"package": packages, "service": services, "user": users, "group": groups, "mount": mounts,
        "sysctl": sysctls, "crontab": crontabs}
# after --health, the app's health checks (no target is --health: each is a path or KIND:NAME)
targets, checks = sys.argv[1:], []
if "--health" in targets:
    targets, checks = targets[:targets.index("--health")], targets[targets.index("--health") + 1:]
out, asked = [], {}
for i, target in enumerate(targets):
    if target.startswith("/"):
        out.append(path_entry(target))
    else:
        out.append({})
        kind, _, what = target.partition(":")
        asked.setdefault(kind, []).append((i, what))
for kind, items in asked.items():
    try:
        states = READ[kind]([what for _, what in items])
    except Exception as exc:
        states = [{"error": "%s: %s" % (type(exc).__name__, exc)}] * len(items)
    for (i, _), state in zip(items, states):
        out[i] = state
print(ascii((out, [health(spec) for spec in checks])))
"""


@dataclass(frozen=True)
class Looked:
    """What one host has at the asked targets, or why it could not be asked (``error``)."""

    entries: tuple[Entry, ...] = ()
    resources: tuple[Resource, ...] = ()
    error: str = ""
    health: tuple[CheckResult, ...] = ()  # the app's health checks, in their order, when it was asked to run them

    def host_health(self, host: str) -> HostHealth:
        """What the health checks found on ``host`` (unknown when it could not be asked)."""
        return HostHealth.of(host, self.health, self.error)


def look(config: Config, asked: Mapping[str, tuple[Connection, Sequence[str]]],
         cwd: Path | None = None, checks: Sequence[HealthCheck] = ()) -> dict[str, Looked]:
    """Ask every host in ``asked`` (host -> connection, targets) what it has there, and run the health ``checks``
    there in the same round trip, all hosts at once.

    ``cwd`` is where Ansible ran (the checkout): a key or an ssh config the inventory names by a
    relative path is found there as Ansible found it.
    """
    # a failed command check's last line of output may hold a secret: that look keeps OpenSSH's own key exchange
    private = any(check.command is not None for check in checks)
    commands = {host: _ssh(config, connection, [*targets, *_health_arguments(checks, connection)], private)
                for host, (connection, targets) in asked.items()}
    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    # a jump host's ssh is started through PATH: it finds the wrapper with the bastion's host key options
    wrappers = config.state_path / "bin"
    ssh_wrappers(config, wrappers, ("ssh",))
    env["PATH"] = f"{wrappers}:{env.get('PATH', os.defpath)}"
    done = run_side_by_side(commands, env=env, timeout=config.ansible.timeout + 30 + budget(checks), cwd=cwd)
    return {host: _looked(host, asked[host][1], checks, finished.code, finished.out, finished.err)
            for host, finished in done.items()}


def _health_arguments(checks: Sequence[HealthCheck], connection: Connection) -> list[str]:
    return ["--health", *(check.argument(connection.address) for check in checks)] if checks else []


def _ssh(config: Config, connection: Connection, targets: Sequence[str], private: bool = False) -> list[str]:
    python = shlex.join(shlex.split(connection.python or "python3"))  # "/usr/bin/env python3" is two words
    program = f'{python} -I -S -c "$p" "$@"'
    if connection.become and (connection.become_method or "sudo") == "sudo":
        run = f"exec sudo -n -u {shlex.quote(connection.become_user or 'root')} {program}"
    else:
        # as root, or through sudo when the login user may use it without a password (what a task's become
        # would do), else as is: sudo refusing exits 1, and so does a program that failed, which then runs again
        run = f'if [ "$(id -u)" != 0 ]; then sudo -n {program}; s=$?; [ $s != 1 ] && exit $s; fi; exec {program}'
    remote = f"p={shlex.quote(REMOTE)}; set -- {shlex.join(targets)}; {run}"
    # ours first: ssh keeps the first value of an option, so no ssh argument of the inventory can weaken
    # host key checking, batch mode or the single connection; theirs before our preferences after them
    first = [*host_key_options(config), "BatchMode=yes", "LogLevel=ERROR", "ControlMaster=no", "ControlPath=none"]
    preferences = [f"ConnectTimeout={round(config.ansible.timeout)}"]
    if config.ssh.verify_key_exchange and not private:
        # offered first, OpenSSH's own list after it: a host that lacks it still answers
        preferences.append(f"KexAlgorithms=^{config.ssh.verify_key_exchange}")
    # in Ansible's order: ssh_args, then the key, port and user, then ssh_common_args and ssh_extra_args
    argv = ["ssh", "-T", *(arg for option in first for arg in ("-o", option)), *connection.ssh_args]
    if connection.private_key_file:
        argv += ["-o", f"IdentityFile={connection.private_key_file}"]
    elif config.ssh.private_key_file:
        argv += ["-o", f"IdentityFile={config.ssh.private_key_file}"]
    if connection.port:
        argv += ["-o", f"Port={connection.port}"]
    if connection.user:
        argv += ["-o", f"User={connection.user}"]
    argv += [*connection.common_args, *(arg for option in preferences for arg in ("-o", option))]
    return [*argv, "--", connection.address, remote]


def _looked(host: str, targets: Sequence[str], checks: Sequence[HealthCheck], code: int | None, out: str,
            err: str) -> Looked:
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    if code is None:
        return Looked(error=f"could not look at {host}: no answer within the timeout")
    if code == 255 and any(sign in err.lower() for sign in HOST_KEY_MISMATCH):
        return Looked(error=f"could not look at {host}: {HOST_KEY_REFUSED}")
    if code != 0:
        return Looked(error=f"could not look at {host}: {lines[-1] if lines else f'exit status {code}'}"[:300])
    try:
        found, healths = ast.literal_eval(out.strip())  # literals only: the host's answer is data, never code
        entries, resources = [], []
        for target, state in zip(targets, found, strict=True):
            if target.startswith("/"):
                entries.append(Entry(path=target, **state))
            else:
                kind, _, name = target.partition(":")
                resources.append(Resource(kind, name, tuple(sorted((str(k), str(v)) for k, v in state.items()))))
        health = tuple(CheckResult(str(check), bool(passed), str(said), int(attempts))
                       for check, (passed, said, attempts) in zip(checks, healths, strict=True))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, AttributeError) as exc:
        return Looked(error=f"could not read {host}'s answer: {exc}")
    return Looked(entries=tuple(entries), resources=tuple(resources), health=health)
