"""A week of a watch daemon's history in one state store: 10-second verifies of 50 hosts, and what retention keeps.

Five apps of ten hosts, recorded as ``controller watch`` records them. Every 10 s it verifies each app (a sync
that looks first: 8,640 an app a day); every hour a scheduled drift check of each fully checks every host; twice
a day someone edits a file on a host of an app under policy apply, and the next verify finds it and puts it back
(one sync); once a day a commit is pushed and rolled out everywhere. The fifth app is under policy detect with
a host drifted all week: every verify fully checks that host and reports the same diff. The runs are recorded
through ``controller.state.Store`` as the pipeline records them, on a clock of the history's own (a week in
minutes). Then: the size of state.db, the rows it holds, each dashboard page timed over real HTTP, and whether
every state change is still in the history. ``python -m bench.retention`` prints the figures; ``--update DIR``
puts them into DIR's benchmarks.*.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.dashboard import TARGET_MS, serve_config, time_pages
from controller.ansible.results import TaskResult
from controller.clock import parse_time
from controller.source.revision import Revision
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.vocabulary import HostState, Kind, Outcome, Phase, Policy, TaskStatus, Trigger

APPS = 5
HOSTS_PER_APP = 10
DAYS = 7
VERIFY_EVERY = 10      # seconds
CHECK_EVERY = 3600
EDITS_A_DAY = 2
TARGET_MB = 50.0
TASKS = 10             # task results a host's manifest covers
DIFF = "--- before: /etc/shop/app.yml\n+++ after\n@@ -1 +1 @@\n-workers: 3 # edited by hand\n+workers: 4\n"
START = datetime(2026, 11, 2, tzinfo=UTC)


@dataclass
class History:
    """What was generated: how many runs of each kind, and the state changes ``history`` must still show."""

    runs: dict[str, int] = field(default_factory=dict)
    changes: list[int] = field(default_factory=list)  # the runs that changed what an app's hosts are
    last_verify: dict[str, str] = field(default_factory=dict)  # per app, when its last verify finished

    def count(self, what: str) -> None:
        self.runs[what] = self.runs.get(what, 0) + 1


class Week:
    """Records one app's runs the way the watch daemon does, at the history's own time."""

    def __init__(self, store: Store, clock: list[datetime], app: str, history: History, policy: Policy) -> None:
        self.store, self.clock, self.app, self.history, self.policy = store, clock, app, history, policy
        self.hosts = [f"web{h}.{app}" for h in range(HOSTS_PER_APP)]
        self.revision = ""
        # under policy detect a drift stays until someone acts: this app's first host all week
        self.standing = self.hosts[:1] if policy is Policy.DETECT else []

    def push(self, number: int) -> None:
        """A commit reaches the branch; a sync rolls it out to every host (leaving a detect app's drift)."""
        revision = Revision(f"{number:040x}", f"Release {number}", "Ops Team <ops@example.com>",
                            self.clock[0].isoformat(timespec="seconds"))
        self.store.record_revision(revision)
        self.revision = revision.sha
        self._run(Trigger.POLL, checked=self.hosts, drifted=self.hosts, applied=True, rolled_out=True)

    def verify(self) -> None:
        """One look per host; a full check of the hosts that differ (a detect app's standing drift)."""
        self._run(Trigger.VERIFY, checked=self.standing, drifted=self.standing, applied=False)
        self.history.last_verify[self.app] = self.store.now()

    def check(self) -> None:
        """The scheduled drift check: every host fully checked."""
        self._run(Trigger.SCHEDULE, checked=self.hosts, drifted=self.standing, applied=False)

    def hand_edit(self, host: str) -> None:
        """A verify finds ``host`` edited by hand; its full check shows the diff and the same sync puts it back."""
        self._run(Trigger.VERIFY, checked=[host], drifted=[host], applied=True)
        self.history.last_verify[self.app] = self.store.now()

    def _run(self, trigger: Trigger, *, checked: list[str], drifted: list[str], applied: bool,
             rolled_out: bool = False) -> None:
        verified = [] if trigger is not Trigger.VERIFY else [h for h in self.hosts if h not in checked]
        run_id = self.store.start_run(self.app, self.revision, Kind.SYNC, trigger, self.policy)
        found = tuple(HostReport(h, TaskStatus.CHANGED if h in drifted else TaskStatus.OK, int(h in drifted), 0)
                      for h in checked)
        tasks = tuple(TaskResult(h, "app : Configure", "template", TaskStatus.CHANGED, DIFF) for h in drifted)
        if checked:
            self.store.add_report(run_id, Phase.CHECK, Report(found, tasks))
        parts = [f"{len(verified)} host(s) verified against their manifests ({len(verified) * TASKS} task results "
                 "covered)"] if verified else []
        if verified and checked:
            parts.append(f"fully checked: {', '.join(checked)}")
        summary: dict[str, object] = {"drifted": drifted, "verified": verified, "failed": [], "unreachable": []}
        if applied:
            self.store.add_report(run_id, Phase.APPLY, Report(found, tasks))
            parts.append(f"{'rolled out ' + self.revision[:12] + ' to' if rolled_out else 'corrected drift on'} "
                         + ", ".join(drifted))
            summary.update(applied_to=drifted, rolled_out=drifted if rolled_out else [],
                           corrected=[] if rolled_out else drifted)
            outcome = Outcome.CONVERGED
            self.history.changes.append(run_id)
        elif drifted:
            parts += [f"drifted: {', '.join(drifted)}", "not applied (policy detect)"]
            outcome = Outcome.DRIFTED
        else:
            outcome = Outcome.IN_SYNC
        self.store.finish_run(run_id, outcome, None, "; ".join(parts) or f"{len(checked)} host(s) in sync", applied,
                              summary, verified=len(verified))
        states = {h: HostState.DRIFTED if h in drifted and not applied else HostState.IN_SYNC for h in self.hosts}
        self.store.record_hosts(self.app, run_id, states, drifted if applied else [], self.revision)
        self.history.count(trigger)


def generate(path: Path, *, apps: int = APPS, days: float = DAYS) -> History:
    """Fill the store at ``path`` with ``days`` of the watch's runs (see the module's docstring)."""
    clock = [START]
    history = History()
    with Store(path, clock=lambda: clock[0].isoformat(timespec="seconds")) as store:
        store.db.execute("PRAGMA synchronous=OFF")  # one fsync per run would make a week take an hour
        weeks = [Week(store, clock, f"app{a}", history, Policy.DETECT if a == APPS - 1 else Policy.APPLY)
                 for a in range(apps)]
        for number, week in enumerate(weeks):
            week.push(number)
        ticks = int(days * 86400 / VERIFY_EVERY)
        edit_every, push_every = 86400 // EDITS_A_DAY // VERIFY_EVERY, 86400 // VERIFY_EVERY
        for tick in range(1, ticks):
            clock[0] = START + timedelta(seconds=tick * VERIFY_EVERY)
            for number, week in enumerate(weeks):
                if tick % push_every == number * 360:  # each app's daily release at its own hour
                    week.push(1000 * tick + number)
                elif tick % edit_every == 180 + number and week.policy is Policy.APPLY:
                    week.hand_edit(week.hosts[tick % HOSTS_PER_APP])
                elif tick % (CHECK_EVERY // VERIFY_EVERY) == 0:
                    week.check()
                else:
                    week.verify()
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return history


def measure(root: Path, requests: int = 15) -> dict[str, Any]:
    """Generate the week, then measure the store and time the dashboard on it."""
    state = root / "state"
    state.mkdir(parents=True)
    started = time.perf_counter()
    history = generate(state / "state.db")
    took = time.perf_counter() - started
    generated = sum(history.runs.values())
    with Store(state / "state.db") as store:
        kept = {row[0]: row[1] for row in store.db.execute("SELECT mode, COUNT(*) FROM runs GROUP BY mode")}
        present = {row[0] for row in store.db.execute("SELECT id FROM runs")}
        [newest] = store.runs("app0", 1, trigger=Trigger.VERIFY)
        hosts = store.hosts("app0")
        clock = store.latest("app0", full=True)  # the drift schedule's: the newest full check
        detect = store.count_runs(f"app{APPS - 1}")
    assert clock is not None and clock.finished is not None
    pages = ["/", "/apps/app0", f"/apps/app{APPS - 1}", f"/runs/{newest.id}", f"/runs/{history.changes[-1]}",
             "/history", "/history?trigger=verify", "/history?page=2", "/audit", "/api/apps", "/api/runs",
             "/api/runs?trigger=schedule", "/metrics"]
    timings = time_pages(serve_config(root, state), pages, requests)
    size = sum(p.stat().st_size for p in state.iterdir() if p.name.startswith("state.db"))
    return {
        "apps": APPS, "hosts": APPS * HOSTS_PER_APP, "days": DAYS, "verify_every_s": VERIFY_EVERY,
        "generated": history.runs, "generated_runs": generated, "rows": kept, "rows_total": sum(kept.values()),
        "state_db_mb": round(size / 1e6, 2), "target_mb": TARGET_MB, "target_ms": TARGET_MS,
        "ms_per_run_recorded": round(took * 1000 / generated, 3),
        "state_changes": len(history.changes),
        "state_changes_in_history": sum(1 for run in history.changes if run in present),
        "newest_verify": {"folded": newest.folded, "first_started": newest.first_started,
                          "finished": newest.finished, "last_generated": history.last_verify["app0"]},
        "hosts_point_at_newest_verify": all(h.run_id == newest.id for h in hosts),
        "last_full_check_minutes_before_the_end": round((parse_time(history.last_verify["app0"])
                                                          - parse_time(clock.finished)).total_seconds() / 60, 1),
        "rows_of_the_detect_app": detect,
        "pages": timings, "slowest_max_ms": max(t["max_ms"] for t in timings.values()),
        "measured_at": time.strftime("%Y-%m-%d"), "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--update", type=Path, metavar="DIR",
                        help="put the figures into DIR/benchmarks.json and write DIR's benchmarks.md again")
    args = parser.parse_args()
    os.umask(0o077)
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        results = measure(Path(tmp))
    print(json.dumps(results, indent=2))
    if args.update:
        from bench import report
        report.update(args.update, "retention", results)
    print(f"state.db under {TARGET_MB:.0f} MB: {'yes' if results['state_db_mb'] < TARGET_MB else 'NO'} "
          f"({results['state_db_mb']} MB); every page under {TARGET_MS:.0f} ms: "
          f"{'yes' if results['slowest_max_ms'] < TARGET_MS else 'NO'} ({results['slowest_max_ms']} ms); "
          f"state changes in history: {results['state_changes_in_history']} of {results['state_changes']}")


if __name__ == "__main__":
    main()
