"""The state model: run kinds, per-host applied revisions, apply only where needed, apps that come and go."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import yaml

from controller.errors import ControllerError
from controller.report.documents import detail_document, run_document
from controller.report.metrics import Metrics
from controller.state.migrations import MIGRATIONS, statements
from controller.state.store import Store
from controller.verify.drift import HostReport, Report
from controller.vocabulary import NO_APP, HostState, Kind, Outcome, Reason, TaskStatus, Trigger
from lab import Lab
from lab.repository import AgeKey
from tests.conftest import APP_YML, VERSION, Fleet, build_fleet, bump_version, git, own_prefix, write_config
from tests.support.receiver import Receiver

BANNER = "/srv/etc/motd"
DATA = Path(__file__).parent / "data"


def status(fleet: Fleet) -> list[dict[str, object]]:
    done = fleet.controller("status", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def with_notifications(fleet: Fleet) -> Receiver:
    receiver = Receiver()
    write_config(fleet, notify=[{"url": receiver.url}])
    return receiver


def test_previews_never_become_state_and_a_dry_run_does_not_count_as_applied(converged_app: Fleet) -> None:
    fleet = converged_app
    receiver = with_notifications(fleet)
    before = status(fleet)
    events = list(receiver.bodies)

    # a pull request that is never merged: a preview of it, as a check and as a dry run
    git(fleet.work, "checkout", "-q", "-b", "pr-9")
    pr = bump_version(fleet, "9.0.0", ref="pr-9")
    git(fleet.work, "checkout", "-q", "main")
    assert fleet.controller("check", "--revision", pr).returncode == 2
    assert fleet.controller("sync", "--dry-run", "--revision", pr).returncode == 2
    assert status(fleet) == before
    assert receiver.bodies == events
    assert {r["mode"] for r in fleet.runs()[:2]} == {"preview"}

    # a new commit whose only change check mode cannot see: a dry run must not mark it applied
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Record the release by a command\n"
                     "  ansible.builtin.command: touch /srv/opt/shop/released-by-command\n")
    fleet.push("A command task")
    dry = fleet.controller("sync", "--dry-run", "--json")
    assert dry.returncode == 3, dry.stdout + dry.stderr  # unverified: not in sync, not drift
    [app] = json.loads(dry.stdout)["apps"]
    assert app["outcome"] == "unverified"
    assert [t["status"] for t in app["check"]["tasks"]] == ["unverified", "unverified"]
    assert status(fleet) == before
    assert fleet.controller("sync", "--dry-run", "--accept-unverified").returncode == 0

    done = fleet.controller("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    for host in ("h1", "h2"):
        assert fleet.host_file(host, "/srv/opt/shop/released-by-command").exists()
    revision = git(fleet.work, "rev-parse", "HEAD")
    [row] = status(fleet)
    assert row["applied_revision"] == revision and row["hosts_at_revision"] == 2
    assert [b["event"] for b in receiver.bodies[len(events):]] == ["revision-applied"]
    receiver.server.shutdown()


def test_a_host_that_missed_a_rollout_is_caught_up_alone(converged_app: Fleet) -> None:
    fleet = converged_app
    receiver = with_notifications(fleet)
    first = git(fleet.work, "rev-parse", "HEAD")
    fleet.lab.stop_host("h2")
    second = bump_version(fleet, "2.0.0")
    assert fleet.controller("sync").returncode == 2
    assert fleet.controller("sync").returncode == 2  # retried while h2 is still down
    # the partial rollout is announced once, not once per retry
    assert [b["event"] for b in receiver.bodies] == ["revision-applied", "run-failed"]
    receiver.server.shutdown()
    [row] = status(fleet)
    assert row["applied_revision"] == second and (row["hosts_at_revision"], row["hosts_total"]) == (1, 2)
    hosts = {h["host"]: h for h in row["hosts"]}  # type: ignore[attr-defined]
    assert hosts["web2.staging"]["revision"] == first and hosts["web2.staging"]["state"] == "unreachable"
    text = fleet.controller("status").stdout
    assert f"web2.staging at {first[:12]}: unreachable since" in text and "1/2" in text
    assert "web2.staging" in fleet.controller("status", "--hosts").stdout

    fleet.lab.start_host("h2")
    untouched = fleet.host_file("h1", VERSION).stat().st_mtime_ns
    code, result = fleet.controller_json("sync")  # the branch has not moved
    assert code == 0, result
    [app] = result["apps"]
    assert app["applied_to"] == {"web2.staging": "new revision"}
    assert fleet.host_file("h2", VERSION).read_text() == "2.0.0\n"
    assert fleet.host_file("h1", VERSION).stat().st_mtime_ns == untouched
    assert status(fleet)[0]["hosts_at_revision"] == 2


def test_a_change_plus_a_check_mode_failure_converges_in_one_sync(converged_app: Fleet) -> None:
    tasks = converged_app.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Write the feature flags\n  ansible.builtin.copy:\n"
                     "    content: \"# flags\\n\"\n    dest: /srv/opt/shop/flags.conf\n    mode: '0644'\n"
                     "    force: false\n"
                     "- name: Turn the cache on\n  ansible.builtin.lineinfile:\n"
                     "    path: /srv/opt/shop/flags.conf\n    line: cache=on\n")
    converged_app.push("Feature flags")
    assert converged_app.controller("sync").returncode == 0
    flags = converged_app.host_file("h1", "/srv/opt/shop/flags.conf")
    flags.unlink()  # by hand: the check now shows a change, and a failure that only follows from it
    # check mode: the copy would recreate the file, so the lineinfile after it fails; reported as such
    code, result = converged_app.controller_json("check")
    assert code == 2 and result["apps"][0]["outcome"] == "drifted", result
    [failed] = [t for t in result["apps"][0]["check"]["tasks"] if t["status"] == "failed"]
    assert failed["task"] == "app : Turn the cache on" and failed["may_depend"], failed
    assert failed["message"].startswith("may depend on a change not yet applied: "), failed
    code, result = converged_app.controller_json("sync")
    assert code == 0, result
    [app] = result["apps"]
    assert {(h["host"], h["status"]) for h in app["check"]["hosts"]} == {
        ("web1.staging", "changed"), ("web2.staging", "ok")}
    assert app["applied_to"] == {"web1.staging": "drifted"}
    assert app["outcome"] == "converged"
    assert flags.read_text() == "# flags\ncache=on\n"
    run = converged_app.controller("show", str(app["run_id"])).stdout
    assert "web1.staging  failed  app : Turn the cache on (ansible.builtin.lineinfile): may depend on a change " \
           "not yet applied: " in run, run


def test_sync_force_applies_everywhere(converged_app: Fleet) -> None:
    code, result = converged_app.controller_json("sync", "--force")
    assert code == 0
    assert result["apps"][0]["applied_to"] == {"web1.staging": "forced", "web2.staging": "forced"}


def test_apps_come_and_go_with_git_and_a_commit_reaches_only_the_apps_it_changes(tmp_path: Path, lab: Lab,
                                                                                  age_key: AgeKey) -> None:
    fleet = build_fleet(tmp_path / "fleet", lab, age_key, apps=("staging", "production"), app_only=True)
    assert fleet.controller("sync").returncode == 0

    # a commit inside production's inventory and a role neither app's playbook names: staging's hosts are at
    # it without an apply, and without a check either: one look at each shows it as its manifest says
    touched = {h: fleet.host_file(h, VERSION).stat().st_mtime_ns for h in ("h1", "h2")}
    group_vars = fleet.work / "inventories/production/group_vars/all/main.yml"
    group_vars.write_text(group_vars.read_text() + "\nbase_note: production only\n")
    unused = fleet.work / "roles/system/defaults/main.yml"  # only playbooks/system.yml names it
    unused.write_text(unused.read_text() + "\n# read by the machine layer alone\n")
    sha = fleet.push("Production only, and a role these apps do not use")
    code, result = fleet.controller_json("sync")
    apps = {a["name"]: a for a in result["apps"]}
    assert code == 0 and apps["production"]["applied_to"] == {"web1.prod": "new revision"}, result
    assert apps["production"]["verify"] is None  # reached: fully checked and applied
    staging = apps["staging"]
    assert (staging["outcome"], staging["apply"]) == ("in-sync", None), staging["message"]
    assert f"{sha[:12]} changes nothing this app uses since" in staging["message"]
    assert {v["host"]: v["why"] for v in staging["verify"]} == {"web1.staging": "", "web2.staging": ""}, staging
    assert "2 host(s) verified against their manifests" in staging["message"]
    assert {h: fleet.host_file(h, VERSION).stat().st_mtime_ns for h in ("h1", "h2")} == touched
    assert {r["app"]: (r["applied_revision"], r["hosts_at_revision"]) for r in status(fleet)} == {
        "staging": (sha, 2), "production": (sha, 1)}
    # and again at the next such commit: the look vouched for the hosts at the revision it moved them to
    group_vars.write_text(group_vars.read_text() + "\nbase_note2: production again\n")
    again = fleet.push("Production only, again")
    code, result = fleet.controller_json("sync", "--app", "staging")
    [staging] = result["apps"]
    assert code == 0 and f"{again[:12]} changes nothing this app uses since {sha[:12]}" in staging["message"]
    assert {v["host"]: v["why"] for v in staging["verify"]} == {"web1.staging": "", "web2.staging": ""}, staging

    runs = len(fleet.runs())
    nosuch = fleet.controller("check", "--app", "nosuch")
    assert nosuch.returncode == 1 and "no app 'nosuch'" in nosuch.stderr
    assert len(fleet.runs()) == runs  # nothing recorded
    assert [r["app"] for r in status(fleet)] == ["production", "staging"]

    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"] = [a for a in gitops["apps"] if a["name"] != "production"]
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    fleet.push("Production moves elsewhere")
    done = fleet.controller("sync")
    assert done.returncode == 0 and "app production is no longer in gitops.yml" in done.stderr
    assert [r["app"] for r in status(fleet)] == ["staging"]
    assert any(r["app"] == "production" for r in fleet.runs())  # its history stays readable
    idle = fleet.controller("sync", "--only-if-changed")
    assert idle.returncode == 0 and "nothing to do" in idle.stdout


def test_drift_on_one_host_of_ten_is_applied_there_alone(tmp_path: Path, age_key: AgeKey) -> None:
    prefix = own_prefix(130)
    with Lab(tmp_path / "lab", 10, prefix=prefix) as lab:  # the leak sweep knows */lab/hosts/* are servers
        fleet = build_fleet(tmp_path / "fleet", lab, age_key)
        inventory = {"all": {"children": {"web": {"hosts": {
            f"web{i}.staging": {"ansible_host": lab.host(f"h{i}").address} for i in range(1, 11)}}}}}
        fleet.write("inventories/staging/hosts.yml", yaml.safe_dump(inventory))
        fleet.push("Ten web servers")
        assert fleet.controller("sync").returncode == 0
        mtimes = {h.name: lab.host(h.name).path(VERSION).stat().st_mtime_ns for h in lab.hosts}
        app_yml = lab.host("h7").path(APP_YML)
        app_yml.write_text(app_yml.read_text().replace("workers: 2", "workers: 64"))

        code, result = fleet.controller_json("sync")
        assert code == 0, result
        [app] = result["apps"]
        assert app["applied_to"] == {"web7.staging": "drifted"}
        assert {h["host"] for h in app["apply"]["hosts"]} == {"web7.staging"}
        assert "workers: 2" in app_yml.read_text()
        assert {h.name: lab.host(h.name).path(VERSION).stat().st_mtime_ns for h in lab.hosts} == mtimes
        assert fleet.host_file("h1", BANNER).exists()


def test_a_database_from_the_previous_release_migrates_and_keeps_its_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript((DATA / "state-0.1.0.sql").read_text())
    with sqlite3.connect(path) as db:
        old_runs = db.execute("SELECT id, app, revision, mode, outcome, message FROM runs ORDER BY id").fetchall()
    with Store(path) as store:
        assert [(r.id, r.app, r.revision, r.kind, r.outcome, r.message)
                for r in reversed(store.runs(limit=100))] == old_runs
        assert store.suspensions()["production"].reason == "change freeze"
        assert store.last_applied("staging") == "2" * 40  # the newest converged sync, per host
        assert {h.host for h in store.hosts("staging")} == {"web1.staging", "web2.staging"}
        assert [r.app for r in store.status()] == ["production", "staging"]
        assert store.run(3).tasks[0].diff == "-workers: 64\n+workers: 2\n"  # type: ignore[union-attr]
        # what /metrics counts starts from the history as it was
        tallies = {(t.app, t.kind, t.outcome): t.runs for t in store.run_tallies()}
    with sqlite3.connect(path) as db:
        assert tallies == {(app, mode, outcome): count for app, mode, outcome, count in db.execute(
            "SELECT app, mode, outcome, COUNT(*) FROM runs WHERE outcome IS NOT NULL AND mode != 'preview'"
            " GROUP BY app, mode, outcome")} != {}
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ControllerError, match="schema 99, newer than this controller"):
        Store(path)


def test_metrics_are_read_from_the_store_and_previews_never_count(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    metrics = Metrics(lambda: Store(path))
    before = metrics.render()
    with Store(path) as store:
        preview = store.start_run("staging", "a" * 40, Kind.PREVIEW, "manual", "apply")
        store.finish_run(preview, Outcome.DRIFTED, None, "drifted", False, {})
        assert metrics.render() == before
        check = store.start_run("staging", "a" * 40, Kind.CHECK, "manual", "apply")
        assert "controller_runs_total{" not in metrics.render().decode()  # counted once it has ended
        store.finish_run(check, Outcome.DRIFTED, None, "drifted: web1", False, {})
        store.record_hosts("staging", check, {"web1": HostState.DRIFTED, "web2": HostState.IN_SYNC}, [], "a" * 40)
        rendered = metrics.render().decode()
        for line in ('controller_runs_total{app="staging",mode="check",outcome="drifted"} 1.0',
                     'controller_run_duration_seconds_bucket{app="staging",le="1.0",mode="check"} 1.0',
                     'controller_drifted_hosts{app="staging"} 1.0',
                     'controller_host_drifted{app="staging",host="web1"} 1.0',
                     'controller_host_drifted{app="staging",host="web2"} 0.0',
                     'controller_hosts_behind{app="staging"} 0.0'):  # nothing applied yet: no revision to be behind
            assert line in rendered, line
        # a sync that rolled a new revision out to web1 and corrected drift on web2 counts each once, as each
        sync = store.start_run("staging", "b" * 40, Kind.SYNC, "manual", "apply")
        store.finish_run(sync, Outcome.CONVERGED, None, "rolled out", True,
                         {"rolled_out": ["web1"], "corrected": ["web2"], "applied_to": ["web1", "web2"]})
        old = store.start_run("staging", "b" * 40, Kind.SYNC, "manual", "apply")  # as an older release recorded it
        store.finish_run(old, Outcome.CONVERGED, None, "corrected: web1", True, {"corrected": ["web1"]})
        rendered = metrics.render().decode()
        assert 'controller_hosts_rolled_out_total{app="staging"} 1.0' in rendered
        assert 'controller_drift_corrected_hosts_total{app="staging"} 1.0' in rendered
        store.retire_missing([], "b" * 40)  # gone from gitops.yml: its series go too
        assert "staging" not in metrics.render().decode()


def test_the_readme_exit_codes_are_the_declared_ones() -> None:
    from controller.report.render import exit_codes_markdown

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert exit_codes_markdown() in readme


def test_status_says_when_the_newest_revision_failed_beside_the_last_good_state(converged_app: Fleet) -> None:
    good = git(converged_app.work, "rev-parse", "HEAD")
    converged_app.write("playbooks/site.yml", (converged_app.work / "playbooks/site.yml").read_text() + "- hosts: [\n")
    broken = converged_app.push("Broken playbook")
    assert converged_app.controller("sync").returncode == 1
    [row] = status(converged_app)
    assert (row["state"], row["applied_revision"]) == ("converged", good)
    assert row["failure"]["revision"] == broken and row["failure"]["reason"] == "SyntaxCheckFailed"  # type: ignore[index]
    line = converged_app.controller("status").stdout.splitlines()[1]
    assert "converged" in line and f"{broken[:12]} failed: app staging: playbooks/site.yml failed the syntax" in line


def test_hosts_outside_the_apply_with_unverified_tasks_keep_the_run_unverified() -> None:
    from controller.verify.drift import decide

    check = Report((HostReport("web1", TaskStatus.CHANGED, 1, 0), HostReport("web2", TaskStatus.OK, 0, 1)), ())
    applied = Report((HostReport("web1", TaskStatus.CHANGED, 1, 0),), ())
    assert decide(check, applied) == (Outcome.UNVERIFIED, None)
    everywhere = Report((HostReport("web1", TaskStatus.CHANGED, 1, 0), HostReport("web2", TaskStatus.OK, 0, 0)), ())
    assert decide(check, everywhere) == (Outcome.CONVERGED, None)


def test_hosts_taken_out_of_the_inventory_are_forgotten(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db") as store:
        both = {"web1": HostState.IN_SYNC, "web2": HostState.IN_SYNC}
        store.record_hosts("staging", 1, both, ["web1", "web2"], "a" * 40)
        store.record_hosts("staging", 2, {"web1": HostState.DRIFTED}, [], "a" * 40)
        assert [(h.host, h.state, h.revision) for h in store.hosts("staging")] == [
            ("web1", "drifted", "a" * 40)]


def test_one_query_names_the_active_apps_and_the_json_keys_are_the_columns(tmp_path: Path) -> None:
    """Active: reconciled (a preview does not count), not retired, not suspended; the documents `--json` and
    /api/ print keep the store's column names in their order, whatever the records call them."""
    with Store(tmp_path / "state.db") as store:
        for app, kind in (("a", Kind.SYNC), ("b", Kind.CHECK), ("c", Kind.SYNC), ("d", Kind.PREVIEW)):
            store.finish_run(store.start_run(app, "1" * 40, kind, Trigger.MANUAL), Outcome.IN_SYNC, None, "", False,
                             {})
        refused = store.start_run(NO_APP, "2" * 40, Kind.SYNC, Trigger.POLL)
        store.finish_run(refused, Outcome.FAILED, Reason.VERIFICATION_FAILED, "unsigned", False, {})
        store.suspend("b", "tester", "freeze")
        store.retire_missing(["a", "b"], "1" * 40)
        assert (store.apps(), store.active_apps()) == (["a", "b"], ["a"])
        newest = store.latest_sync()
        assert newest is not None and (newest.id, newest.reason) == (refused, Reason.VERIFICATION_FAILED)
        detail = store.run(refused)
        assert detail is not None
        columns = [row[1] for row in store.db.execute("PRAGMA table_info(runs)")]
        assert list(detail_document(detail)) == [*columns, "hosts", "tasks", "audit"]
        row = dict(store.db.execute("SELECT * FROM runs WHERE id = ?", (refused,)).fetchone())
        assert run_document(detail.run) == {**row, "applied": False, "summary": {}, "kept": True}


def test_a_store_opened_while_another_process_migrates_it_is_not_migrated_twice(tmp_path: Path) -> None:
    """`watch` and a `controller history` opening a new state directory at once: the one that waited for the
    other's migration reads the schema again instead of creating its tables a second time."""
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")  # the other process is migrating
    opened: list[int | BaseException] = []

    def open_store() -> None:
        try:
            with Store(path) as store:
                opened.append(len(store.runs()))
        except BaseException as error:  # handed to the test's thread
            opened.append(error)

    waiting = threading.Thread(target=open_store)
    waiting.start()
    time.sleep(0.5)  # it has read schema 0 and waits for the write lock
    for number, script in enumerate(MIGRATIONS, start=1):
        for statement in statements(script):
            other.execute(statement)
        other.execute(f"PRAGMA user_version = {number}")
    other.execute("COMMIT")
    other.close()
    waiting.join(timeout=60)
    assert opened == [0]
