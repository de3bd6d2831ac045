"""Verify between full checks: record each in-sync host's manifest, then compare hosts to it in one look.

A host that matches its manifest is *verified*: every path and resource (package, service, user,
group, mount, sysctl value, crontab) its covered tasks manage is as the last full run left it.
That is less than "in sync" (a command task, a package named by a wildcard are only seen by a full
check), so a verdict names what the manifest covers and when the full check ran.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from controller.ansible.results import Connection, PlayRun
from controller.clock import now
from controller.config import Config
from controller.source.apps import HealthCheck
from controller.verify.drift import HostReport, Report, settle
from controller.verify.health import HostHealth
from controller.verify.manifest import Coverage, Manifest, Verdict, ordered
from controller.verify.probe import look
from controller.vocabulary import HostState, TaskStatus

SHOWN_DIFFERENCES = 3
# host states a full check leaves without a manifest
UNSETTLED = (HostState.DRIFTED, HostState.FAILED, HostState.UNREACHABLE)


def verify_hosts(config: Config, manifests: Mapping[str, Manifest | None], states: Mapping[str, HostState],
                 digest: str, cwd: Path | None = None, checks: Sequence[HealthCheck] = ()) -> list[Verdict]:
    """Compare every host of an app with its manifest (``states``: each host's at the last full check), all hosts
    at once, and run its health ``checks`` in the same look; [] when there is none to use. ``cwd`` is the
    checkout, where Ansible ran (``probe.look``)."""
    usable = {host: m for host, m in manifests.items() if m is not None and m.digest == digest and not m.error}
    asked = {host: (m.connection, m.targets) for host, m in usable.items()}
    looked = look(config, asked, cwd, checks) if usable else {}
    health = {host: found.host_health(host) for host, found in looked.items()} if checks else {}
    verdicts = []
    for host, manifest in sorted(manifests.items()):
        if manifest is None:
            state = states.get(host)
            verdicts.append(Verdict(host, False, f"{state} at the last full check" if state in UNSETTLED
                                    else "no manifest from the last full check"))
        elif manifest.digest != digest:
            verdicts.append(Verdict(host, False, "its inputs changed since the last full check "
                                                 "(revision, bastion config, vars, or versions)", manifest))
        elif manifest.error:
            verdicts.append(Verdict(host, False, f"{manifest.error} (after the last full check)", manifest))
        elif looked[host].error:
            verdicts.append(Verdict(host, False, looked[host].error, manifest, health.get(host)))
        else:
            now_there = looked[host]
            # a removed package or user first: the files it owned then differ too
            said = [d for before, after in zip(manifest.resources, now_there.resources, strict=True)
                    for d in before.differences(after)]
            said += [d for before, after in zip(manifest.entries, now_there.entries, strict=True)
                     for d in before.differences(after)]
            more = f" (and {len(said) - SHOWN_DIFFERENCES} more)" if len(said) > SHOWN_DIFFERENCES else ""
            verdicts.append(Verdict(host, not said, "; ".join(said[:SHOWN_DIFFERENCES]) + more, manifest,
                                    health.get(host)))
    return verdicts


def verified_report(verdicts: list[Verdict], full: Report | None, at_revision: Collection[str]) -> Report:
    """One report of the app: verified hosts as in sync, the rest as their full check found them; tasks check
    mode cannot verify are open only on hosts not ``at_revision`` (``drift.settle``)."""
    verified = tuple(HostReport(v.host, TaskStatus.OK, 0, v.manifest.unverified if v.manifest else 0)
                     for v in verdicts if v.verified)
    hosts = [*settle(Report(verified, ()), at_revision).hosts, *(full.hosts if full else ())]
    return Report(tuple(sorted(hosts, key=lambda h: h.host)), full.tasks if full else ())


def manifests_after(config: Config, played: PlayRun, in_sync: set[str], digest: str, revision: str,
                    previous: Mapping[str, Manifest | None], unverified: Mapping[str, int],
                    cwd: Path | None = None) -> dict[str, Manifest | None]:
    """The manifest of every host a full run saw: hosts in sync get one (looked at once, unless the last
    one came from the same inputs and targets), the others None. ``unverified``: per host, the tasks
    check mode cannot verify at this revision (the check's count, for an apply too)."""
    coverage: dict[str, Coverage] = {}
    for touched in played.touched:
        coverage.setdefault(touched.host, Coverage()).add(touched.task, touched.action, touched.targets)
    for task in played.tasks:
        if task.status is TaskStatus.UNVERIFIED:
            coverage.setdefault(task.host, Coverage()).add(task.task, task.action, ())
    connections: Mapping[str, Connection] = played.connections or {}
    stamp = now()
    result: dict[str, Manifest | None] = {}
    ask: dict[str, tuple[Connection, tuple[str, ...]]] = {}
    for summary in played.hosts:
        host, seen = summary.host, coverage.get(summary.host, Coverage())
        result[host] = None
        if host not in in_sync:
            continue
        connection = connections.get(host)
        targets = ordered(seen.targets)
        before = previous.get(host)
        # the same inputs and a host in sync: the same paths and resources as then, no need to look again
        again = before is not None and before.digest == digest and before.connection == connection \
            and before.targets == targets and not before.error
        manifest = Manifest(host, digest, revision, stamp, connection or Connection(host),
                            before.entries if before and again else (), seen.covered, tuple(seen.uncovered),
                            unverified.get(host, 0), before.resources if before and again else ())
        if connection is None:  # ansible_connection local, docker...: no ssh to look through
            manifest = replace(manifest, error=f"could not look at {host}: Ansible does not reach it over ssh")
        elif not again:
            ask[host] = (connection, targets)
        result[host] = manifest
    for host, looked in (look(config, ask, cwd) if ask else {}).items():
        made = result[host]
        assert made is not None
        result[host] = replace(made, entries=looked.entries, resources=looked.resources, error=looked.error)
    return result


def check_health(config: Config, checks: Sequence[HealthCheck], connections: Mapping[str, Connection],
                 cwd: Path | None = None) -> dict[str, HostHealth]:
    """Run the health ``checks`` on every host of ``connections``: one round trip each, all hosts at once."""
    looked = look(config, {host: (connection, ()) for host, connection in connections.items()}, cwd, checks)
    return {host: found.host_health(host) for host, found in looked.items()}
