"""The state store on a real PostgreSQL server (Debian's package, started by the tests): the same calls give the
same answers as on the SQLite file, a store that cannot be reached is one line whose URL keeps its password
masked, and two watch daemons on one store make an HA pair that reconciles, and verifies, from it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from selenium.webdriver.common.by import By

from controller.ansible.results import Connection, TaskResult
from controller.clock import parse_time
from controller.report.metrics import Metrics
from controller.source.revision import Revision
from controller.state.database import NAMESPACE
from controller.state.locks import RECONCILE
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.verify.health import CheckResult, HostHealth
from controller.verify.manifest import Entry, Manifest
from controller.vocabulary import Act, Health, HostState, Kind, Outcome, Phase, Policy, Reason, TaskStatus, Trigger
from tests.conftest import BIN, Fleet, bump_version
from tests.support.browser import chromium
from tests.support.daemon import daemon, free_port, version_is, wait_for, watch_config
from tests.support.postgres import PASSWORD, Postgres
from tests.test_retention import Clock

OLD, NEW = "a" * 40, "b" * 40
HOSTS = ("web1", "web2", "web3")


def history(store: Store, clock: Clock) -> None:
    """A bit of everything the pipeline and the people write, in the order they write it."""
    for sha, subject in ((OLD, "Release 1"), (NEW, "Release 2")):
        store.record_revision(Revision(sha, subject, "Ops <ops@example.com>", clock()))
    for sha, outcome in ((OLD, Outcome.CONVERGED), (NEW, Outcome.FAILED)):
        clock.tick(minutes=5)
        run = store.start_run("shop", sha, Kind.SYNC, Trigger.POLL, Policy.APPLY)
        store.add_live(run, Phase.CHECK, [TaskResult("web1", "app : Configure", "template", TaskStatus.CHANGED, "")])
        assert store.live(run) and store.live_stamp(run) == "1:0"
        store.set_live_rollout(run, {"batch": 1})
        store.set_live_rollout(run, {"batch": 2})
        assert store.live_stamp(run) == "1:2" and store.live_rollout(run) == {"batch": 2}
        for phase in (Phase.CHECK, Phase.APPLY):
            store.add_report(run, phase, Report(
                tuple(HostReport(h, TaskStatus.CHANGED, 1, 0) for h in reversed(HOSTS)),
                tuple(TaskResult(h, "app : Configure", "template", TaskStatus.CHANGED, f"-3\n+4 {phase}")
                      for h in HOSTS)))
        clock.tick(seconds=42)
        store._clocks.clear()  # its seconds from the clock, as for a run another process started: the same twice
        store.finish_run(run, outcome, None if outcome is Outcome.CONVERGED else Reason.TASK_FAILED, f"{outcome}",
                         True, {"rolled_out": list(HOSTS), "corrected": [], "drifted": [], "failed": []})
        store.record_hosts("shop", run, {h: HostState.IN_SYNC for h in HOSTS}, list(HOSTS), sha)
        store.halt("shop", sha, run, OLD, "web2: health check failed")
        store.halt("shop", sha, run, OLD, "again: web3")
    store.record_health("shop", {h: HostHealth(h, Health.HEALTHY) for h in HOSTS}, declared=True)
    store.record_health("shop", {"web2": HostHealth("web2", Health.UNHEALTHY,
                                                    (CheckResult("tcp 8443", False, "refused", 3),))},
                        declared=True)
    manifest = Manifest("web1", "d1", OLD, clock(), Connection("10.0.0.1", 22, "deploy"),
                        (Entry("/etc/app.conf", "file", "0644", "root", "root", "f" * 40),), 3)
    store.record_manifests("shop", {"web1": manifest, "web2": None}, every_host=True)
    store.record_manifests("shop", {"web1": dataclasses.replace(manifest, digest="d2")}, every_host=False)
    store.clear_halts("shop")
    store.halt("shop", NEW, 2, OLD, "halted")
    store.pin("shop", OLD, NEW, 1, "alice", "bad release")
    store.pin("shop", OLD, NEW, 2, "bob", "still bad")
    entry = store.record_act(Act.SYNC, "shop", "carol", "by hand")
    store.link_act(entry, 2)
    store.suspend("shop", "dave", "maintenance")
    store.suspend("shop", "dave", "longer maintenance")
    store.approve("shop", NEW, "erin", "reviewed")
    store.approve("shop", NEW, "frank", "again")
    store.require_approval("shop", True)
    store.require_approval("shop", True)
    store.announce_revision("shop", NEW)
    store.set_condition("shop", "failed")
    for kind, trigger in ((Kind.VERIFY, Trigger.VERIFY), (Kind.CHECK, Trigger.SCHEDULE)):
        for _ in range(3):  # the same look again: folded
            clock.tick(seconds=10)
            run = store.start_run("shop", OLD, kind, trigger, Policy.APPLY)
            store._clocks.clear()
            store.finish_run(run, Outcome.IN_SYNC, None, "in sync", False, {"drifted": [], "verified": list(HOSTS)},
                             verified=3 if kind is Kind.VERIFY else 0)
    waiting = store.start_run("cart", NEW, Kind.SYNC, Trigger.MANUAL, Policy.APPLY)
    store._clocks.clear()
    store.finish_run(waiting, Outcome.HELD, Reason.APPROVAL_REQUIRED, "waits", False,
                     {"approval": {"waiting": NEW}, "drifted": []})
    store.start_run("cart", NEW, Kind.PREVIEW, Trigger.MANUAL)  # left running: the controller was killed
    clock.tick(minutes=1)
    assert store.interrupt_unfinished() == 1
    store.retire_missing(["shop"], NEW)
    store.unpin("shop", "grace", "fixed")
    store.resume("shop", "heidi", "done")


def answers(store: Store) -> dict[str, Any]:
    """What every reader says."""
    runs = store.runs(None, 100)
    return {
        "runs": runs, "details": [store.run(r.id) for r in runs],
        "counts": [store.count_runs(app, outcome=o, trigger=t, kind=k) for app in (None, "shop")
                   for o in (None, "running", Outcome.IN_SYNC) for t in (None, Trigger.VERIFY)
                   for k in (None, Kind.VERIFY)],
        "hosts": store.hosts("shop"), "manifests": store.manifests("shop"), "apps": store.apps(),
        "status": [dataclasses.replace(s, last_run=None, failure=None) for s in store.status()],
        "tallies": store.run_tallies(),
        "changes": store.host_changes(), "audit": store.audit(), "halt": store.halted("shop"),
        "pin": store.pinned("shop"), "approval": store.approval("shop", NEW),
        "awaiting": store.awaiting_approval("cart"), "requires": store.requires_approval("shop"),
        "named": store.revisions_named("shop", "AAA"), "revision": store.revision(OLD),
        "converged": store.converged_revisions("shop"), "latest": store.latest("shop", full=True),
        "latest_sync": store.latest_sync(), "previous": store.previous_run("shop", 99, [Outcome.CONVERGED]),
        "events": store.host_events("shop", "web2"), "condition": store.condition("shop"),
        "applied": store.applied_revisions("shop"), "suspensions": store.suspensions(), "stamp": store.stamp(),
    }


def metrics(path: Path, url: str | None) -> bytes:
    """/metrics of the store."""
    return Metrics(lambda: Store(path, url=url)).render()


def test_the_same_calls_give_the_same_answers_on_sqlite_and_postgresql(tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.url("same_answers")
    found = []
    for where in (None, url):
        clock = Clock()
        with Store(tmp_path / "state.db", clock=clock, url=where) as store:
            history(store, clock)
            found.append(answers(store))
        found.append(metrics(tmp_path / "state.db", where))
    sqlite, sqlite_metrics, postgresql, postgresql_metrics = found
    assert sqlite["runs"] and sqlite["hosts"] and sqlite["audit"] and sqlite["tallies"]  # the history is all there
    for key in sqlite:
        assert postgresql[key] == sqlite[key], key
    assert postgresql_metrics == sqlite_metrics
    # the rows' order as recorded (SQLite's rowid, PostgreSQL's seq): the hosts as the report listed them
    detail = next(d for d in postgresql["details"] if d.hosts)
    assert [h.host for h in detail.hosts][:3] == list(reversed(HOSTS))


def test_a_store_that_cannot_be_reached_is_one_line_with_the_password_masked(tmp_path: Path,
                                                                             postgres: Postgres) -> None:
    config = tmp_path / "controller.yml"
    down = f"postgresql://controller:{PASSWORD}@127.0.0.1:{free_port()}/none"  # nothing listens there
    wrong = postgres.url("wrong_password").replace(PASSWORD, "not-the-password")
    for url, says in ((down, "Connection refused"), (wrong, "password authentication failed")):
        config.write_text(json.dumps({"source": {"url": str(tmp_path / "none.git")}, "state_dir": str(tmp_path),
                                      "state": {"url": url}}))
        done = subprocess.run([str(BIN / "controller"), "status", "--config", str(config)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and says in line and "postgresql://controller:***@127.0.0.1" in line, line
        assert PASSWORD not in done.stderr and "not-the-password" not in done.stderr
    for url, says in ((f"mysql://root:{PASSWORD}@db/x", "state.url: not a PostgreSQL URL"),
                      (f"postgresql://controller@db/x?password={PASSWORD}", "state.url: a password in the query")):
        config.write_text(json.dumps({"source": {"url": "x"}, "state": {"url": url}}))
        done = subprocess.run([str(BIN / "controller"), "status", "--config", str(config)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 1 and says in done.stderr and PASSWORD not in done.stderr, done.stderr


def test_processes_opening_a_new_postgresql_store_at_once_migrate_it_once(tmp_path: Path,
                                                                          postgres: Postgres) -> None:
    url = postgres.url("at_once")
    config = tmp_path / "controller.yml"
    config.write_text(json.dumps({"source": {"url": str(tmp_path / "none.git")}, "state_dir": str(tmp_path),
                                  "state": {"url": url}}))
    started = [subprocess.Popen([str(BIN / "controller"), "history", "--json", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for process in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and json.loads(out) == [], err
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(13,)]


def bastion(fleet: Fleet, name: str, url: str, port: int) -> Fleet:
    """Another bastion of the same fleet: a state directory and config of its own, the same remote and store."""
    other = Fleet(fleet.root / name, fleet.lab, fleet.key, fleet.secrets)
    other.root.mkdir()
    config = yaml.safe_load(fleet.config.read_text())
    config.update(state_dir=str(other.state), state={"url": url})
    config["watch"]["listen"] = f"127.0.0.1:{port}"
    other.config.write_text(yaml.safe_dump(config))
    return other


def test_two_watches_on_one_postgresql_store_one_leads_and_the_other_takes_over_when_it_is_killed(
        converged_app: Fleet, postgres: Postgres) -> None:
    converged = converged_app
    url = postgres.url("pair")
    (converged.state / "state.db").unlink()
    watch_config(converged, watch_local=True)
    ports = free_port(), free_port()
    first, second = (bastion(converged, f"bastion-{n}", url, port) for n, port in zip("ab", ports, strict=True))
    with daemon(first, ports[0]) as leader:
        wait_for("the first cycle", leader.cycled)
        with daemon(second, ports[1]) as standby:
            wait_for("the second watch to stand by, naming the leader", lambda: standby.health()["leader"])
            assert standby.health()["role"] == "standby"
            assert leader.health()["role"] == "leader"
            assert f"pid {leader.proc.pid}: controller watch" in standby.health()["leader"]
            second_release = bump_version(converged, "2.0.0")
            wait_for("2.0.0 on the hosts", version_is(converged, "2.0.0"))
            wait_for("the leader's cycle to end", leader.settled)
            # the standby's dashboard reads the shared store, says it stands by, and acts on nothing
            with chromium(converged.root / "chromium") as browser:
                browser.get(standby.url + "/apps/staging")
                banner = browser.find_element(By.ID, "standby").text
                assert banner.startswith("Read-only: this watch stands by") and f"pid {leader.proc.pid}" in banner
                assert browser.find_elements(By.ID, "sync") == [] and "2.0.0" in browser.page_source
            status, said = standby.request("POST", "/api/apps/staging/sync")
            assert status == 503 and "stands by" in json.loads(said)["error"]
            # cron on either bastion takes its turn as it always did: busy while another run holds the lock
            with psycopg.connect(url, application_name="bastion-a pid 1: controller sync") as other:
                other.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, RECONCILE))
                busy = second.controller("sync")
            assert busy.returncode == 75 and "(bastion-a pid 1: controller sync)" in busy.stderr, busy.stderr
            assert PASSWORD not in busy.stderr
            standing = standby.log()

            third_release = bump_version(converged, "3.0.0")
            wait_for("the leader's sync of 3.0.0", lambda: any(
                r["outcome"] is None and r["revision"] == third_release for r in second.runs()), timeout=60)
            leader.proc.kill()  # SIGKILL mid-run: no clean-up; its connections end, and their locks with them
            killed = time.time()
            wait_for("the standby to lead", lambda: standby.health()["role"] == "leader", timeout=15)
            wait_for("3.0.0 on the hosts", version_is(converged, "3.0.0"))
            wait_for("its cycle to end", standby.settled)
    assert "standing by" in standing and "cycle:" not in standing  # exactly one watch reconciled
    found = second.runs()
    # the killed leader's run: recorded, not lost, and said to be interrupted; the new leader ran it again
    [interrupted] = [r for r in found if r["outcome"] == "interrupted"]
    assert interrupted["revision"] == third_release and "killed" in interrupted["message"], interrupted
    applied = [r["revision"] for r in found if r["applied"]]
    # each revision applied once (the first, to record the hosts' revision in the new store): nothing repeated
    assert len(applied) == len(set(applied)) and applied[:2] == [third_release, second_release], found
    assert all(r["outcome"] is not None for r in found), found  # nothing left running
    took_over = next(r for r in found if r["applied"])
    assert parse_time(took_over["started"]).timestamp() - killed < 15

    # the manifests the new leader's sync recorded, read back from PostgreSQL: one look per host
    looked = second.controller("verify", "--json")
    [app] = json.loads(looked.stdout)["apps"]
    assert looked.returncode == 0 and [v["verified"] for v in app["verify"]] == [True, True], looked.stdout
    assert not any(b.state.joinpath("state.db").exists() for b in (converged, first, second))
    with psycopg.connect(url) as db:
        everything = "\n".join(str(row) for table in ("runs", "task_results", "manifests", "hosts", "audit")
                               for row in db.execute(f"SELECT * FROM {table}"))
    assert "web1.staging" in everything and PASSWORD not in everything + looked.stdout + standby.log()
    assert not any(plaintext in everything for plaintext in converged.secrets.values())
