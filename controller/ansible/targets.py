"""What a task's result says it manages: the paths of file-type modules, and resources as ``kind:name``.

Read from each result as the events stream (no raw event is kept), so that a manifest can record
exactly what the host's tasks manage and verify's look can ask the host about it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeGuard

# Modules whose result names the path they manage; what they leave there is all they manage.
FILE_ACTIONS = frozenset({"file", "copy", "template", "lineinfile", "blockinfile", "ini_file", "replace",
                          "assemble", "xml", "patch"})
# Tasks that change nothing on the host: nothing to cover.
STATELESS_ACTIONS = frozenset({"debug", "set_fact", "assert", "fail", "meta", "setup", "gather_facts", "stat",
                               "include_tasks", "import_tasks", "include_role", "import_role", "include_vars",
                               "add_host", "group_by", "pause", "wait_for", "wait_for_connection", "ping",
                               "package_facts", "service_facts", "slurp", "fetch", "find", "getent",
                               "set_stats", "validate_argument_spec"})


class ResourceKind(StrEnum):
    """What a resource-type task manages, as verify's look reads it on the host."""

    PACKAGE = "package"    # installed version (dpkg's status file, or rpm)
    SERVICE = "service"    # running and enabled (systemd when it runs, else the SysV init script)
    USER = "user"          # uid, primary group, home, shell, supplementary groups
    GROUP = "group"        # gid
    MOUNT = "mount"        # what is mounted there (/proc/mounts) and its fstab line
    SYSCTL = "sysctl"      # the kernel's value (/proc/sys)
    CRONTAB = "crontab"    # a user's crontab, as a checksum


RESOURCE_ACTIONS = {
    **dict.fromkeys(("apt", "package", "dnf", "dnf5", "yum"), ResourceKind.PACKAGE),
    **dict.fromkeys(("service", "systemd", "systemd_service", "sysvinit"), ResourceKind.SERVICE),
    "user": ResourceKind.USER, "group": ResourceKind.GROUP, "mount": ResourceKind.MOUNT,
    "sysctl": ResourceKind.SYSCTL, "cron": ResourceKind.CRONTAB,
}
# a .deb named as Debian names them: package_version_architecture.deb
DEB_FILE = re.compile(r"^([a-z0-9][a-z0-9+.-]*)_[^_/]+_[^_/]+\.deb$")


def short_action(action: str) -> str:
    """``ansible.builtin.template`` -> ``template``; collection modules keep their last name too."""
    return action.rsplit(".", 1)[-1]


def targets_of(action: str, res: Mapping[str, Any]) -> tuple[str, ...]:
    """What a task's result (loop items included) says it manages: absolute paths, and resources as
    ``kind:name``; () for a task that names nothing verify can look at, or something it cannot name."""
    short = short_action(action)
    if short not in FILE_ACTIONS and short not in RESOURCE_ACTIONS:
        return ()
    found: list[str] = []
    for source in [res, *(r for r in res.get("results", []) if isinstance(r, dict))]:
        invocation = source.get("invocation")
        args = invocation.get("module_args", {}) if isinstance(invocation, dict) else {}
        if not isinstance(args, dict):
            args = {}
        if short in FILE_ACTIONS:
            for value in (source.get("path"), source.get("dest"), args.get("path"), args.get("dest")):
                if _absolute(value):
                    found.append(value)
                    break
        elif args or source.get("name"):
            named = _resources(RESOURCE_ACTIONS[short], args, source)
            if named is None:
                return ()  # a task that manages something unnamed is only covered by a full check
            found.extend(named)
    return tuple(dict.fromkeys(found))


def _absolute(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith("/") and "\n" not in value


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value] if isinstance(value, list) else []


def _resources(kind: ResourceKind, args: Mapping[str, Any], res: Mapping[str, Any]) -> list[str] | None:
    """The ``kind:name`` targets (and paths) of one result of a resource module; None: it cannot be named."""
    if kind is ResourceKind.PACKAGE:
        names = []
        for name in _names(args.get("name")):
            # "nginx=1.24.0-1~bookworm", "nginx>=1.2": the package, whatever version the task pins
            plain = re.split(r"[=<>\s]", name, maxsplit=1)[0]
            if not plain or any(c in plain for c in "*?[/@") or "://" in name:
                return None
            names.append(plain)
        deb = args.get("deb")
        if isinstance(deb, str) and deb:
            match = DEB_FILE.match(posixpath.basename(deb))
            if match is None:
                return None
            names.append(match.group(1))
        return [f"{kind}:{n}" for n in names] or None
    if kind is ResourceKind.MOUNT:
        where = args.get("path") or args.get("name")
        return [f"{kind}:{where}"] if _absolute(where) else None
    if kind is ResourceKind.CRONTAB:
        cron_file = args.get("cron_file")
        if isinstance(cron_file, str) and cron_file:
            return [cron_file if cron_file.startswith("/") else f"/etc/cron.d/{cron_file}"]
        return [f"{kind}:{args.get('user') or ''}"]  # '': the user the module ran as
    called = args.get("name") or res.get("name")
    if not isinstance(called, str) or not called or "\n" in called:
        return None
    found = [f"{kind}:{called}"]
    if kind is ResourceKind.SYSCTL and _absolute(args.get("sysctl_file")):
        found.append(args["sysctl_file"])
    return found
