"""Verify between full checks: record each in-sync host's manifest, then compare hosts to it in one look.

A host that matches its manifest is *verified*: every file-type task's path is as the last full run
left it. That is less than "in sync" (a package, a service or a command task is only seen by a full
check), so a verdict names what the manifest covers and when the full check ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from controller.config import Config
from controller.drift import HostState, Report
from controller.manifest import Connection, Coverage, Manifest
from controller.probe import look
from controller.runner import PlayRun
from controller.state import Store, now

SHOWN_DIFFERENCES = 3


@dataclass(frozen=True)
class Verdict:
    """One host after a verify: ``verified``, or why it needs a full check."""

    host: str
    verified: bool
    why: str = ""
    manifest: Manifest | None = None

    def to_json(self) -> dict[str, object]:
        found = self.manifest
        return {"host": self.host, "verified": self.verified, "why": self.why,
                "covered_tasks": found.covered if found else 0,
                "paths": len(found.entries) if found else 0,
                "uncovered_tasks": list(found.uncovered) if found else [],
                "last_full_check": found.checked_at if found else None}


def verify_hosts(config: Config, store: Store, app: str, digest: str) -> list[Verdict]:
    """Compare every host of the app with its manifest, all hosts at once; [] when there is none to use."""
    manifests = store.manifests(app)
    usable = {host: m for host, m in manifests.items() if m is not None and m.digest == digest}
    looked = look(config, {host: (m.connection, m.paths) for host, m in usable.items()}) if usable else {}
    verdicts = []
    for host, manifest in sorted(manifests.items()):
        if manifest is None:
            verdicts.append(Verdict(host, False, "not in sync at the last full check"))
        elif manifest.digest != digest:
            verdicts.append(Verdict(host, False, "its inputs changed since the last full check "
                                                 "(revision, bastion config, vars, or versions)", manifest))
        elif looked[host].error:
            verdicts.append(Verdict(host, False, looked[host].error, manifest))
        else:
            said = [d for before, after in zip(manifest.entries, looked[host].entries, strict=True)
                    for d in before.differences(after)]
            more = f" (and {len(said) - SHOWN_DIFFERENCES} more)" if len(said) > SHOWN_DIFFERENCES else ""
            verdicts.append(Verdict(host, not said, "; ".join(said[:SHOWN_DIFFERENCES]) + more, manifest))
    return verdicts


def verified_report(verdicts: list[Verdict], full: Report | None) -> Report:
    """One report of the app: verified hosts as in sync, the rest as their full check found them."""
    hosts = [HostState(v.host, "ok", 0, v.manifest.unverified if v.manifest else 0) for v in verdicts if v.verified]
    if full is not None:
        hosts.extend(full.hosts)
    return Report(tuple(sorted(hosts, key=lambda h: h.host)), full.tasks if full else ())


def manifests_after(config: Config, played: PlayRun, in_sync: set[str], digest: str, revision: str,
                    previous: Mapping[str, Manifest | None]) -> dict[str, Manifest | None]:
    """The manifest of every host a full run saw: hosts in sync get one (looked at once, unless the last
    one came from the same inputs and paths), the others None."""
    coverage: dict[str, Coverage] = {}
    for touched in played.touched:
        coverage.setdefault(touched.host, Coverage()).add(touched.task, touched.action, touched.paths)
    unverified: dict[str, int] = {}
    for task in played.tasks:
        if task.status == "unverified":
            coverage.setdefault(task.host, Coverage()).add(task.task, task.action, ())
            unverified[task.host] = unverified.get(task.host, 0) + 1
    connections: Mapping[str, Connection] = played.connections or {}
    stamp = now()
    result: dict[str, Manifest | None] = {}
    ask: dict[str, tuple[Connection, tuple[str, ...]]] = {}
    for summary in played.hosts:
        host, seen = summary.host, coverage.get(summary.host, Coverage())
        connection = connections.get(host)
        result[host] = None
        if host not in in_sync or connection is None:
            continue
        before = previous.get(host)
        result[host] = Manifest(host, digest, revision, stamp, connection, before.entries if before else (),
                                seen.covered, tuple(seen.uncovered), unverified.get(host, 0))
        # the same inputs and a host in sync: the same paths as then, no need to look again
        if before is None or before.digest != digest or before.connection != connection \
                or before.paths != tuple(seen.paths):
            ask[host] = (connection, tuple(seen.paths))
    for host, looked in (look(config, ask) if ask else {}).items():
        manifest = result[host]
        result[host] = replace(manifest, entries=looked.entries) if manifest and not looked.error else None
    return result
