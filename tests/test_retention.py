"""Retention in a real state store (a SQLite file, a PostgreSQL database): the same run again and again is one
row, what matters is never folded or pruned, and the rest goes by age and count (the store's own clock stands in
for the hours that pass)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bench.retention import generate
from controller.ansible.results import TaskResult
from controller.config import RetentionConfig
from controller.report.render import history_text
from controller.source.revision import Revision
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.vocabulary import Act, HostState, Kind, Outcome, Phase, Policy, Reason, TaskStatus, Trigger
from tests.conftest import BIN

SHA = "a" * 40
HOSTS = ("web1", "web2")
DIFF = "--- before\n+++ after\n-workers: 3\n+workers: 4\n"


class Clock:
    """The store's clock, moved by hand."""

    def __init__(self) -> None:
        self.at = datetime(2026, 11, 2, tzinfo=UTC)

    def __call__(self) -> str:
        return self.at.isoformat(timespec="seconds")

    def tick(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def record(store: Store, outcome: Outcome = Outcome.IN_SYNC, *, kind: Kind = Kind.SYNC,
           trigger: Trigger = Trigger.VERIFY, drifted: tuple[str, ...] = (), applied: bool = False,
           reason: Reason | None = None, checked: tuple[str, ...] = (), diff: str = DIFF) -> int:
    """One finished run of app ``web`` as the pipeline records it: the hosts it fully checked (``checked``, the
    ``drifted`` among them with a task and its diff), the rest verified against their manifests; then its hosts'
    states. By default what ``controller watch`` records every ``verify_interval``: a sync that looks first."""
    run_id = store.start_run("web", SHA, kind, trigger, Policy.APPLY)
    checked = checked or drifted
    if checked:
        store.add_report(run_id, Phase.CHECK, Report(
            tuple(HostReport(h, TaskStatus.CHANGED if h in drifted else TaskStatus.OK, int(h in drifted), 0)
                  for h in checked),
            tuple(TaskResult(h, "app : Configure", "template", TaskStatus.CHANGED, diff) for h in drifted)))
    verified = [h for h in HOSTS if h not in checked] if trigger is Trigger.VERIFY else []
    store.finish_run(run_id, outcome, reason, f"{outcome}: {', '.join(drifted) or 'nothing'}", applied,
                     {"drifted": list(drifted), "verified": verified, "failed": [], "unreachable": []},
                     verified=len(verified))
    store.record_hosts("web", run_id, {h: HostState.DRIFTED if h in drifted and not applied else HostState.IN_SYNC
                                       for h in HOSTS}, list(drifted) if applied else [], SHA)
    return run_id


def rows(store: Store) -> list[tuple[int, int]]:
    """Each run of the store, oldest first: its id and how many runs it stands for."""
    return [(r.id, r.folded) for r in reversed(store.runs("web", 100))]


def test_the_same_run_again_is_folded_into_it_and_a_changed_one_never(tmp_path: Path, store_url: str | None) -> None:
    clock = Clock()
    with Store(tmp_path / "state.db", clock=clock, url=store_url) as store:
        store.record_revision(Revision(SHA, "Release", "Ops <ops@example.com>", clock()))
        synced = record(store, trigger=Trigger.POLL, outcome=Outcome.CONVERGED, drifted=HOSTS, applied=True)
        first = record(store)  # every host verified, in sync after the sync: a state change, kept
        looks = []
        for _ in range(3):
            clock.tick(seconds=10)
            looks.append(record(store))
        assert rows(store) == [(synced, 1), (first, 1), (looks[-1], 3)]
        newest = store.run(looks[-1])
        assert newest is not None and newest.run.first_started == "2026-11-02T00:00:10+00:00"
        assert store.run(looks[0]) is None and store.run(looks[1]) is None
        assert {h.run_id for h in store.hosts("web")} == {looks[-1]}  # each host's last look is the newest run
        assert "in-sync, 3 times since" in history_text(store.runs("web"))

        # the scheduled full check between the looks finds the same but is not the same run: a row of its own
        scheduled = record(store, trigger=Trigger.SCHEDULE, checked=HOSTS)
        look = record(store)
        assert rows(store)[-2:] == [(scheduled, 1), (look, 1)]

        # a drift found (a diff) is kept; the same drift found again and again (policy detect) folds after it,
        # each row with its diff; a host checked in full for once is not the same run; a failure never folds
        drift = [record(store, Outcome.DRIFTED, drifted=("web1",)) for _ in range(4)]
        other = record(store, Outcome.DRIFTED, drifted=("web1",), checked=HOSTS)
        edited = record(store, Outcome.DRIFTED, drifted=("web1",), diff=DIFF + "+threads: 8\n")
        failed = [record(store, Outcome.FAILED, reason=Reason.FETCH_FAILED) for _ in range(3)]
        back = record(store)
        assert rows(store)[-8:] == [(drift[0], 1), (drift[-1], 3), (other, 1), (edited, 1), *((f, 1) for f in failed),
                                    (back, 1)]
        for run_id in (drift[0], drift[-1]):
            detail = store.run(run_id)
            assert detail is not None and [t.diff for t in detail.tasks] == [DIFF]
        kept = {r.id: r.kept for r in store.runs("web", 100)}
        assert kept[drift[0]] and not kept[drift[-1]] and kept[edited] and all(kept[f] for f in failed)

        # a run an audit entry names (a dashboard's Sync now) stays the run it names
        named = record(store)
        store.record_act(Act.SYNC, "web", "alice", "look now", run_id=named)
        after = record(store)
        assert rows(store)[-3:] == [(back, 1), (named, 1), (after, 1)]
        later = record(store)  # folds the run before it, which nothing names
        assert rows(store)[-3:] == [(back, 1), (named, 1), (later, 2)]
        assert store.run(named) is not None and store.audit("web")[0].run_id == named
        # /metrics counts every run, folded or not: the tallies were kept as each finished
        tallies = {(t.kind, t.outcome): t.runs for t in store.run_tallies()}
        assert tallies[Kind.SYNC, Outcome.IN_SYNC] == 10 and tallies[Kind.SYNC, Outcome.DRIFTED] == 6


def test_retention_prunes_the_unremarkable_by_age_and_count_and_never_the_drift_clock(tmp_path: Path,
                                                                                     store_url: str | None) -> None:
    clock = Clock()
    with Store(tmp_path / "state.db", RetentionConfig(max_age=3600, max_runs=4), clock=clock, url=store_url) as store:
        applied = record(store, trigger=Trigger.POLL, outcome=Outcome.CONVERGED, drifted=HOSTS, applied=True)
        drift = record(store, Outcome.DRIFTED, trigger=Trigger.SCHEDULE, drifted=("web2",), checked=HOSTS)
        failed = record(store, Outcome.FAILED, trigger=Trigger.SCHEDULE, reason=Reason.FETCH_FAILED)
        back = record(store)  # in sync again: a state change
        quiet = []
        for _ in range(6):  # a scheduled full check, then a look: none folds, six pairs ten minutes apart
            clock.tick(minutes=10)
            quiet.append(record(store, trigger=Trigger.SCHEDULE, checked=HOSTS))
            quiet.append(record(store))
        kept = [run.id for run in reversed(store.runs("web", 100))]
        # the newest four unremarkable runs are left (max_runs), the older ones go
        assert kept == [applied, drift, failed, back, *quiet[-4:]], (kept, quiet)

        clock.tick(hours=2)  # all of them past max_age now: the next run prunes what it may
        newest = record(store)  # a look, the same as the one before it: folds it
        # the remarkable stay; of the rest, only the newest full check (the drift schedule's clock) and the newest
        assert rows(store) == [(applied, 1), (drift, 1), (failed, 1), (back, 1), (quiet[-2], 1), (newest, 2)]
        latest = store.latest("web", full=True)
        assert latest is not None and latest.id == quiet[-2]
        # a sync by hand checks every host in full: the drift schedule counts from it now, and the scheduled check
        # can go; the look the hosts' states pointed at when it finished stays until the next run
        manual = record(store, trigger=Trigger.MANUAL, checked=HOSTS)
        assert rows(store) == [(applied, 1), (drift, 1), (failed, 1), (back, 1), (newest, 2), (manual, 1)]
        latest = store.latest("web", full=True)
        assert latest is not None and latest.id == manual


def test_a_generated_half_day_of_10_second_verifies_keeps_every_state_change_in_few_rows(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    history = generate(state / "state.db", apps=2, days=0.5)
    assert history.runs[Trigger.VERIFY] > 8_000 and len(history.changes) >= 4, history.runs
    with Store(state / "state.db") as store:
        present = {row[0] for row in store.db.execute("SELECT id FROM runs")}
        assert set(history.changes) <= present  # every drift found and put back, every release
        assert len(present) < 200, len(present)
        [newest] = store.runs("app0", 1, trigger=Trigger.VERIFY)
        assert newest.finished == history.last_verify["app0"] and newest.folded > 300
        clock = store.latest("app0", full=True)
        assert clock is not None and clock.trigger is Trigger.SCHEDULE

    # what a person reads: the newest verify says when it ran and how many it stands for
    config = tmp_path / "controller.yml"
    config.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git")}, "state_dir": str(state)}))
    shown = subprocess.run([str(BIN / "controller"), "--config", str(config), "history", "--app", "app0",
                            "--trigger", "verify", "--json", "--limit", "1"], capture_output=True, text=True,
                           check=True)
    [run] = json.loads(shown.stdout)
    assert (run["id"], run["folded"], run["finished"]) == (newest.id, newest.folded, history.last_verify["app0"])
    assert run["first_started"] < run["started"] and run["kept"] is False
    # the id of a run folded into a later one is gone, and asking for it says why
    gone = next(number for number in range(1, max(present)) if number not in present)
    missing = subprocess.run([str(BIN / "controller"), "--config", str(config), "show", str(gone)],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and missing.stderr.strip().endswith(
        f"no run {gone} in the state store (see `controller history`; a run the same as the next is folded into it, "
        "and old unremarkable runs are pruned (retention))"), missing.stderr
