"""`controller verify`: one ssh round trip per host against its manifest, a full check only where needed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from controller.ansible.results import Connection
from controller.state.store import Store
from lab import Lab, counting_ssh
from lab.repository import AgeKey
from tests.conftest import APP_YML, TEST_PREFIX, VERSION, Fleet, build_fleet, secret, write_config
from tests.support.daemon import daemon, wait_for, watch_config

COMMAND_TASK = ("\n- name: Read the kernel release\n  ansible.builtin.command: uname -r\n"
                "  check_mode: false\n  changed_when: false\n")


def verify(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = fleet.controller("verify", "--json", *args, env=env)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def verdicts(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [app] = result["apps"]
    return {v["host"]: v for v in app["verify"]}


def test_an_unchanged_fleet_verifies_with_one_ssh_connection_per_host_and_no_playbook(converged: Fleet,
                                                                                   tmp_path: Path) -> None:
    env, calls = counting_ssh(tmp_path)
    code, result = verify(converged, env=env)
    assert code == 0, result
    found = verdicts(result)
    assert set(found) == {"web1.staging", "web2.staging"}
    assert all(v["verified"] for v in found.values()), found
    # every managed path of the example (directories, templates, copies, lineinfile) is covered
    assert all(v["covered_tasks"] >= 8 and v["paths"] >= 12 for v in found.values()), found
    assert all(v["last_full_check"] for v in found.values())
    lines = calls.read_text().splitlines()
    assert len(lines) == 2, lines  # one connection per host, nothing else (no Ansible, no module upload)
    assert sorted(lines) == [converged.lab.host("h1").address, converged.lab.host("h2").address]
    # X25519 offered first (ssh.verify_key_exchange's default), OpenSSH's own list after it
    assert Path(f"{calls}.kex").read_text().splitlines() == ["KexAlgorithms=^curve25519-sha256"] * 2
    [app] = result["apps"]
    assert app["outcome"] == "in-sync" and app["check"]["tasks"] == []
    run = converged.runs()[0]
    assert run["mode"] == "verify" and run["summary"]["verified"] == ["web1.staging", "web2.staging"]

    text = converged.controller("verify")
    assert text.returncode == 0
    assert "web1.staging  verified" in text.stdout and "as the full check at" in text.stdout
    # the same verify again: one row stands for the two that found the same (retention)
    assert converged.controller("verify").returncode == 0
    newest = converged.runs()[0]
    assert (newest["mode"], newest["folded"]) == ("verify", 2) and newest["first_started"] <= newest["started"]
    assert [r["mode"] for r in converged.runs()] == ["verify", "verify", "sync"]
    assert "in-sync, 2 times since" in converged.controller("history").stdout


def test_a_host_unreachable_at_the_last_full_check_is_fully_checked_alone(fleet_app: Fleet) -> None:
    fleet = fleet_app
    fleet.lab.stop_host("h2")
    assert fleet.controller("sync").returncode == 2  # partial: web2 unreachable, so it has no manifest
    fleet.lab.start_host("h2")
    done = fleet.controller("verify", "--json", "--progress")
    code, result = done.returncode, json.loads(done.stdout)
    assert " on web2.staging)" in done.stderr, done.stderr  # web1's look was enough: no full check of it
    found = verdicts(result)
    assert found["web1.staging"]["verified"], found
    assert found["web2.staging"]["why"] == "unreachable at the last full check", found
    assert code == 2, result  # web2 was never converged: its drift, from a full check of web2 alone
    [app] = result["apps"]
    assert {t["host"] for t in app["check"]["tasks"]} == {"web2.staging"}, app
    run = fleet.runs()[0]
    assert run["mode"] == "verify" and run["verified"] == 1 and run["summary"]["verified"] == ["web1.staging"]


def replace_by_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def test_each_kind_of_hand_change_is_caught_and_reported_with_the_full_checks_diff(tmp_path: Path,
                                                                                   age_key: AgeKey) -> None:
    # one kind of change on each of five hosts at once, and a sixth left alone (an unchanged host must still
    # verify): one round of verify, sync and verify instead of a round per pair of kinds
    names = {f"h{i}": f"web{i}.staging" for i in range(1, 7)}
    with Lab(tmp_path / "lab", len(names), prefix=TEST_PREFIX) as lab:
        # the app role alone: every change below is to a file it writes
        fleet = build_fleet(tmp_path / "fleet", lab, age_key, placement={"staging": {n: h for h, n in names.items()}},
                            app_only=True)
        tasks = fleet.work / "roles/app/tasks/main.yml"
        tasks.write_text(tasks.read_text().replace('dest: "{{ app_root }}/VERSION"\n',
                                                   'dest: "{{ app_root }}/VERSION"\n    owner: root\n'))
        fleet.push("The version file belongs to root")
        assert fleet.controller("sync").returncode == 0
        app_yml = fleet.host_file("h1", APP_YML)
        version = {host: fleet.host_file(host, VERSION) for host in names}
        changes: list[tuple[str, str, Callable[[], object], str]] = [  # host, what, the change, what verify says
            ("h1", "a hand edit of a templated file", lambda: app_yml.write_text(app_yml.read_text() + "debug: true\n"),
             f"{APP_YML}: content changed"),
            ("h2", "a mode change", lambda: version["h2"].chmod(0o600), f"{VERSION}: mode 0644 -> 0600"),
            ("h3", "an owner change", lambda: os.chown(version["h3"], 4242, 4242), f"{VERSION}: owner root -> 4242"),
            ("h4", "a deleted managed file", version["h4"].unlink, f"{VERSION}: was a file, now gone"),
            ("h5", "a file replaced by a symlink", lambda: replace_by_link(version["h5"]),
             f"{VERSION}: was a file, now a link"),
        ]
        for _, _, change, _ in changes:
            change()
        code, result = verify(fleet)
        assert code == 2, result
        found = verdicts(result)
        changed_hosts = {names[host] for host, _, _, _ in changes}
        for host, what, _, said in changes:
            assert not found[names[host]]["verified"] and said in found[names[host]]["why"], (what, found)
        assert found["web6.staging"]["verified"], found
        [app] = result["apps"]
        # the full check ran on the changed hosts only, and their drift is Ansible's own
        assert {h["host"]: h["status"] for h in app["check"]["hosts"]} == {
            name: "changed" if name in changed_hosts else "ok" for name in names.values()}
        changed = [t for t in app["check"]["tasks"] if t["status"] == "changed"]
        assert {t["host"] for t in changed} == changed_hosts
        assert any("-debug: true" in t["diff"] for t in changed if t["host"] == "web1.staging"), changed
        # the same hand changes seen by a sync that verifies first: corrected on those hosts only
        done = fleet.controller("sync", "--verify-first", "--json")
        assert done.returncode == 0, (done.stdout, done.stderr)
        [synced] = json.loads(done.stdout)["apps"]
        assert synced["applied_to"] == dict.fromkeys(changed_hosts, "drifted")
        assert verify(fleet)[0] == 0
        assert "debug: true" not in app_yml.read_text()
        assert all(v.stat().st_mode & 0o777 == 0o644 and v.stat().st_uid == 0 and not v.is_symlink()
                   for v in version.values())

        # what no task manages (app.yml's owner): flagged once, found in sync by the full check, then taken as is
        os.chown(app_yml, 4242, 4242)
        code, result = verify(fleet)
        assert code == 0 and "owner root -> 4242" in verdicts(result)["web1.staging"]["why"], result
        code, result = verify(fleet)
        assert code == 0 and verdicts(result)["web1.staging"]["verified"], result


def test_changed_inputs_make_verify_fully_check_every_host(converged_app: Fleet) -> None:
    fleet = converged_app

    def falls_back(expected_code: int) -> dict[str, Any]:
        code, result = verify(fleet)
        assert code == expected_code, result
        found = verdicts(result)
        assert all(not v["verified"] and "inputs changed" in v["why"] for v in found.values()), found
        [app] = result["apps"]
        assert {h["host"] for h in app["check"]["hosts"]} == {"web1.staging", "web2.staging"}
        assert fleet.controller("sync").returncode == 0
        assert verify(fleet)[0] == 0
        return result

    # a changed group var: a new revision, the template it feeds has drifted on every host
    group_vars = fleet.work / "inventories/staging/group_vars/all/main.yml"
    group_vars.write_text(group_vars.read_text() + "\napp_log_level: debug\n")
    fleet.push("A group var")
    falls_back(2)
    # a changed secret
    fleet.encrypt("inventories/staging/group_vars/all/secrets.sops.yml",
                  {"app_db_password": secret("rotated-db"), "app_api_token": secret("rotated-token")})
    fleet.push("Rotate the secrets")
    rotated = json.dumps(falls_back(2))
    # the hosts still held the old secret: the diff's "before" side masks it too
    assert "[redacted]" in rotated and fleet.secrets["staging"] not in rotated
    # a bastion change that reaches no host (notifications, the listener, the daemon's intervals): still verified
    write_config(fleet, notify=[{"url": "http://127.0.0.1:9/hook", "events": ["run-failed"]}],
                 watch={"poll_interval": "5m", "drift_check_interval": "2h", "listen": "127.0.0.1:0"})
    code, result = verify(fleet)
    assert code == 0 and all(v["verified"] for v in verdicts(result).values()), result
    assert fleet.runs()[0]["summary"]["rechecked"] == [], result  # no host needed a full check
    # a changed bastion config that reaches the hosts, and no new commit at all
    write_config(fleet, ansible={"timeout": "11s"})
    falls_back(0)


def test_tasks_the_manifest_cannot_cover_are_listed_with_the_last_full_check(fleet_app: Fleet) -> None:
    fleet = fleet_app
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + COMMAND_TASK)
    fleet.push("A command task")
    # no manifest yet: verify is a full check of every host, which records them
    done = fleet.controller("verify", "--json")
    assert done.returncode == 2, done.stdout  # nothing was applied yet: drift everywhere
    assert "no host has a manifest yet" in done.stderr
    [app] = json.loads(done.stdout)["apps"]
    assert app["verify"] is None and len(app["check"]["hosts"]) == 2
    assert fleet.controller("sync").returncode == 0
    checked_at = {h: v for h, v in verdicts(verify(fleet)[1]).items()}
    for verdict in checked_at.values():
        assert verdict["verified"]
        assert verdict["uncovered_tasks"] == ["app : Read the kernel release"], verdict
        assert verdict["last_full_check"]
    text = fleet.controller("verify").stdout
    assert "covered only by that full check: app : Read the kernel release" in text


def test_verifies_do_not_move_the_full_check_schedule(converged_app: Fleet) -> None:
    write_config(converged_app, watch={"drift_check_interval": "3s"})
    assert converged_app.controller("sync").returncode == 0
    time.sleep(3.5)  # the full check is now due
    done = converged_app.controller("sync", "--verify-first", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["apps"][0]["verify"], done.stdout
    # a sync whose hosts were only verified is no full check: the one due still is
    idle = converged_app.controller("sync", "--only-if-changed", "--json")
    assert idle.returncode == 0 and json.loads(idle.stdout)["idle"] is None, idle.stdout
    assert converged_app.runs()[0]["verified"] == 0  # that sync checked every host


def test_verify_config_and_watch_interval_are_read(fleet: Fleet) -> None:
    config = yaml.safe_load(fleet.config.read_text())
    config["watch"] = {"verify_interval": "-5s"}
    fleet.config.write_text(yaml.safe_dump(config))
    done = fleet.controller("verify")
    assert done.returncode == 1 and "watch.verify_interval" in done.stderr


def test_watch_verifies_on_its_interval_and_corrects_a_hand_edit(converged_app: Fleet) -> None:
    fleet = converged_app
    watch_config(fleet, verify_interval="1s", drift_check_interval="1h")
    version = fleet.host_file("h1", VERSION)
    with daemon(fleet) as watch:
        wait_for("the first cycle: the fleet is converged already", lambda: "nothing to do" in watch.log())
        wait_for("a quiet verify", lambda: any(r["trigger"] == "verify" and r["verified"] == 2
                                               for r in fleet.runs()))
        version.write_text("hand edit\n")
        wait_for("the correction", lambda: any(r["trigger"] == "verify" and r["applied"] and r["finished"]
                                               for r in fleet.runs()), timeout=60)
        # stopped in the middle of a look (h2 frozen: its ssh hangs), the daemon records no run
        looks = watch.log().count("verifying the hosts against their manifests")
        fleet.lab.freeze_host("h2")
        try:
            wait_for("the next look", lambda: watch.log().count("verifying the hosts against") > looks)
            time.sleep(0.5)
            runs = fleet.runs()
            assert watch.stop() == 0
        finally:
            fleet.lab.thaw_host("h2")
        assert fleet.runs() == runs
    # so the cron fast path still has nothing to do
    started = time.monotonic()
    idle = fleet.controller("sync", "--only-if-changed")
    assert idle.returncode == 0 and "nothing to do" in idle.stdout, idle.stdout + idle.stderr
    assert time.monotonic() - started < 10 and fleet.runs() == runs
    assert version.read_text() != "hand edit\n"
    corrected = [r for r in fleet.runs() if r["trigger"] == "verify" and r["applied"]]
    assert corrected and corrected[0]["summary"]["applied_to"] == ["web1.staging"], corrected
    assert corrected[0]["summary"]["verified"] == ["web2.staging"]
    assert "verify every 1s" in watch.log()


def test_a_manifest_an_earlier_controller_stored_still_loads(tmp_path: Path) -> None:
    earlier = {"host": "web1", "digest": "d", "revision": "r", "checked_at": "t", "covered": 1, "uncovered": [],
               "unverified": 0, "connection": {"address": "192.0.2.1", "port": 2222, "user": "deploy"},
               "entries": [{"path": "/etc/motd", "kind": "file", "sha1": "0" * 40}]}
    with Store(tmp_path / "state.db") as store:
        store.db.execute("INSERT INTO manifests VALUES (?, ?, ?, ?, ?)",
                         ("staging", "web1", "d", "t", json.dumps(earlier)))
        [manifest] = store.manifests("staging").values()
    assert manifest is not None and manifest.connection == Connection("192.0.2.1", 2222, "deploy")
    assert manifest.resources == () and manifest.error == "" and manifest.targets == ("/etc/motd",)
