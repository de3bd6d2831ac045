"""`controller sync` and `controller check` end to end: a bare remote, real sops, real sshd hosts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path

from controller.mounts import MEMORY_FILESYSTEMS, filesystem_type
from lab import Lab, counting_ssh
from lab.repository import AgeKey
from tests.conftest import APP_YML, BIN, VERSION, Converged, Fleet, bump_version, fleet_on, git, secret, write_config
from tests.support.processes import PlaybookWatch, parent, workspaces
from tests.support.refusals import assert_refused


def test_sync_applies_a_pushed_commit_then_has_nothing_to_do(converged_app_original: Converged,
                                                              converged_app: Fleet) -> None:
    fleet = converged_app  # its first sync, on fresh hosts, is the one every converged_app test starts from
    first = converged_app_original.first
    assert first.returncode == 0, first.stderr
    for host in ("h1", "h2"):
        assert fleet.host_file(host, VERSION).read_text() == "1.0.0\n"
        config = fleet.host_file(host, APP_YML).read_text()
        assert f'password: "{fleet.secrets["staging"]}"' in config  # the secret reached the host
    assert fleet.secrets["staging"] not in first.stdout + first.stderr
    assert "[redacted]" in first.stdout
    assert not fleet.host_file("h3", VERSION).exists()  # h3 is production, not in this repository's apps

    sha = bump_version(fleet, "2.0.0")
    with PlaybookWatch() as watch:
        second = fleet.controller("sync")
    assert second.returncode == 0, second.stderr
    # the new revision's syntax check, its check and its apply: passes of one ansible-playbook process
    assert list(watch.modes.values()) == [{"--syntax-check", "--check"}], watch.modes
    assert sha[:12] in second.stdout
    assert fleet.host_file("h1", VERSION).read_text() == "2.0.0\n"
    # a new commit is a rollout, named so: not drift, and nothing "corrected"
    assert f"rolled out {sha[:12]} to web1.staging, web2.staging" in second.stdout, second.stdout
    assert f"staging rollout of {sha[:12]}:" in second.stdout and "drift" not in second.stdout
    assert "+2.0.0" in second.stdout  # the diff of what was rolled out

    third = fleet.controller("sync")
    assert third.returncode == 0, third.stderr
    assert "in-sync" in third.stdout
    runs = fleet.runs()
    assert [(r["outcome"], r["applied"]) for r in runs] == [
        ("in-sync", False), ("converged", True), ("converged", True)]
    assert {r["revision"] for r in runs[:2]} == {sha}
    assert (runs[1]["summary"]["rolled_out"], runs[1]["summary"]["corrected"]) == (
        ["web1.staging", "web2.staging"], [])


def test_check_reports_a_manual_change_and_sync_puts_it_back(converged_app: Fleet, tmp_path: Path) -> None:
    app_yml = converged_app.host_file("h2", APP_YML)
    app_yml.write_text(app_yml.read_text().replace("workers: 2", "workers: 64"))
    before = app_yml.read_text()

    code, report = converged_app.controller_json("check")
    assert code == 2
    [app] = report["apps"]
    assert app["outcome"] == "drifted"
    drifted = [t for t in app["check"]["tasks"] if t["status"] == "changed"]
    assert {(t["host"], t["task"]) for t in drifted} >= {("web2.staging", "app : Render the application configuration")}
    assert all(t["host"] == "web2.staging" for t in drifted)
    [diff] = [t["diff"] for t in drifted if t["task"].endswith("configuration")]
    assert "-workers: 64" in diff and "+workers: 2" in diff
    assert app_yml.read_text() == before  # check changed nothing

    text = converged_app.controller("check")
    assert text.returncode == 2
    assert "web2.staging" in text.stdout and "-workers: 64" in text.stdout
    assert "staging drift:" in text.stdout and "rollout" not in text.stdout  # the revision is not new: drift

    env, calls = counting_ssh(tmp_path)
    fixed = converged_app.controller("sync", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert "workers: 2" in app_yml.read_text()
    # the apply runs in the check's ansible-playbook, through the connections the check made: one per host (and
    # the look that takes the changed host's manifest after it)
    looks = calls.read_text().splitlines()
    assert looks == [converged_app.lab.host("h2").address]
    assert len(Path(f"{calls}.all").read_text().splitlines()) == 2 + len(looks)
    assert "corrected drift on web2.staging" in fixed.stdout and "rolled out" not in fixed.stdout, fixed.stdout
    assert converged_app.runs()[0]["summary"]["corrected"] == ["web2.staging"]
    assert converged_app.runs()[0]["summary"]["rolled_out"] == []
    assert converged_app.controller("check").returncode == 0

    shown = converged_app.controller("show", str(report["apps"][0]["run_id"]))
    assert shown.returncode == 0 and "-workers: 64" in shown.stdout and "drifted" in shown.stdout


def test_one_host_down_the_others_converge_and_the_run_is_partial(fleet: Fleet) -> None:
    fleet.lab.stop_host("h2")
    code, report = fleet.controller_json("sync")
    assert code == 2
    [app] = report["apps"]
    assert app["outcome"] == "partial" and app["reason"] == "HostUnreachable"
    assert fleet.host_file("h1", VERSION).read_text() == "1.0.0\n"
    assert not fleet.host_file("h2", VERSION).exists()
    # unreachable at the first task, a loop: why is the connection's own message, not "All items completed"
    [down] = [t for t in app["check"]["tasks"] if t["host"] == "web2.staging"]
    assert down["status"] == "unreachable" and down["task"] == "base : Create the configuration directories"
    assert "Connection refused" in down["message"] and "All items completed" not in down["message"], down
    # and it is not dialled again in the apply: the plan leaves it out and says so
    assert [h["host"] for h in app["apply"]["hosts"]] == ["web1.staging"]
    assert app["left_out"] == {"web2.staging": "unreachable in the check"}
    assert "not applied to web2.staging: unreachable in the check" in app["message"]

    fleet.lab.start_host("h2")  # back: the same revision is applied again, since it was only partial
    again = fleet.controller("sync")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.host_file("h2", VERSION).read_text() == "1.0.0\n"


def test_bad_commits_are_refused_before_anything_is_applied(converged_app: Fleet) -> None:
    good = git(converged_app.work, "rev-parse", "HEAD")
    again = converged_app.controller("check", "--progress")  # the same inputs passed their syntax check a moment ago
    assert again.returncode == 0 and "syntax check of staging: passed before at the same inputs" in again.stderr

    # a syntax error, with the new version in the same commit: nothing of it may land
    converged_app.write("playbooks/site.yml", (converged_app.work / "playbooks/site.yml").read_text() + "- hosts: [\n")
    bump_version(converged_app, "9.9.9")
    for _ in range(2):  # a failed syntax check is never remembered
        assert_refused(converged_app, ("sync",), "SyntaxCheckFailed", "playbooks/site.yml", "syntax check")
    git(converged_app.work, "revert", "--no-edit", "HEAD")

    # a gitops.yml an editor saved as Latin-1: a run had started, so it is recorded, failed, naming gitops.yml
    recorded = len(converged_app.runs())
    gitops = converged_app.work / "gitops.yml"
    gitops.write_bytes(gitops.read_bytes() + b"# caf\xe9\n")
    converged_app.push("Latin-1")
    assert_refused(converged_app, ("sync",), "ConfigInvalid", "controller: gitops.yml: list of apps is not UTF-8 text")
    assert len(converged_app.runs()) == recorded + 1
    git(converged_app.work, "revert", "--no-edit", "HEAD")

    # a tampered SOPS file: one encrypted value replaced by another file's ciphertext
    path = "inventories/staging/group_vars/all/secrets.sops.yml"
    text = (converged_app.work / path).read_text().splitlines()
    token = next(i for i, line in enumerate(text) if line.startswith("app_api_token:"))
    password = next(i for i, line in enumerate(text) if line.startswith("app_db_password:"))
    text[token] = "app_api_token:" + text[password].split(":", 1)[1]
    converged_app.write(path, "\n".join(text) + "\n")
    converged_app.push("Tamper")
    assert_refused(converged_app, ("sync",), "DecryptionFailed", path)

    # a SOPS file encrypted for a key the bastion does not have
    from tests.conftest import make_age_key

    stranger = make_age_key(converged_app.root / "stranger")
    sops_yaml = converged_app.work / ".sops.yaml"
    sops_yaml.write_text(sops_yaml.read_text().replace(converged_app.key.recipient, stranger.recipient))
    converged_app.encrypt(path, {"app_db_password": secret("stranger"), "app_api_token": secret("stranger")})
    converged_app.push("Re-encrypt for someone else")
    assert_refused(converged_app, ("sync",), "DecryptionFailed", path, "cannot decrypt")

    # a plaintext file where .sops.yaml says secrets live
    converged_app.write(path, f"app_db_password: {secret('plain')}\n")
    converged_app.push("Oops, plaintext")
    assert_refused(converged_app, ("sync",), "DecryptionFailed", path, "not encrypted")

    # a symlink that leaves the repository
    git(converged_app.work, "reset", "-q", "--hard", good)
    os.symlink("/etc/shadow", converged_app.work / "roles/app/templates/leak.j2")
    converged_app.push("Link out", force=True)
    assert_refused(converged_app, ("sync", "--allow-rewrite"), "SnapshotFailed", "leak.j2")
    git(converged_app.work, "reset", "-q", "--hard", good)
    git(converged_app.work, "push", "-q", "--force", "origin", "HEAD:main")

    # the watched branch is missing, the remote is unreachable, the key file is gone
    write_config(converged_app, source={"url": str(converged_app.remote), "branch": "nope"})
    assert_refused(converged_app, ("sync",), "RevisionNotFound", "'nope'")
    write_config(converged_app, source={"url": str(converged_app.root / "gone.git"), "branch": "main"})
    assert_refused(converged_app, ("sync",), "FetchFailed", "cannot fetch", "gone.git")
    write_config(converged_app, sops={"age_key_file": str(converged_app.root / "missing.key")})
    assert_refused(converged_app, ("sync",), "DecryptionFailed", "missing.key")

    assert converged_app.host_file("h1", VERSION).read_text() == "1.0.0\n"
    assert all(r["revision"] == good or r["outcome"] == "failed" for r in converged_app.runs())


def test_durations_as_people_type_them_and_config_before_the_command(converged_app: Fleet) -> None:
    fleet = converged_app
    write_config(fleet, watch={"poll_interval": "5m", "drift_check_interval": "1h30m", "debounce": "0.5s"},
                 ansible={"task_timeout": "2m", "timeout": 10},
                 source={"url": str(fleet.remote), "fetch_timeout": "90s"})
    elsewhere = fleet.root / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(BIN / "controller"), "--config", str(fleet.config), "sync"], cwd=elsewhere,
                          env={k: v for k, v in os.environ.items() if k != "CONTROLLER_CONFIG"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    status = subprocess.run([str(BIN / "controller"), "--config", str(fleet.config), "status"], cwd=elsewhere,
                            env={k: v for k, v in os.environ.items() if k != "CONTROLLER_CONFIG"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0 and "staging" in status.stdout

    from controller.config import load_config
    config = load_config(fleet.config)
    assert (config.watch.poll_interval, config.watch.drift_check_interval, config.watch.debounce) == (300, 5400, 0.5)
    assert (config.ansible.task_timeout, config.source.fetch_timeout) == (120, 90)


def test_a_rewritten_history_is_refused_unless_allowed(converged_app: Fleet) -> None:
    applied = git(converged_app.work, "rev-parse", "HEAD")
    git(converged_app.work, "commit", "-q", "--amend", "-m", "Rewritten")
    bump_version(converged_app, "3.0.0", force=True)
    refused = converged_app.controller("sync")
    assert refused.returncode == 1
    assert "does not descend from the last applied" in refused.stderr and applied[:12] in refused.stderr
    assert converged_app.host_file("h1", VERSION).read_text() == "1.0.0\n"
    assert converged_app.controller("check").returncode == 2  # a check is still allowed: it changes nothing
    allowed = converged_app.controller("sync", "--allow-rewrite")
    assert allowed.returncode == 0, allowed.stderr
    assert converged_app.host_file("h1", VERSION).read_text() == "3.0.0\n"


def test_preview_a_revision_dry_run_and_detect_policy_change_nothing(converged_app: Fleet) -> None:
    git(converged_app.work, "checkout", "-q", "-b", "pr-7")
    pr = bump_version(converged_app, "7.0.0", ref="pr-7")
    git(converged_app.work, "checkout", "-q", "main")

    code, preview = converged_app.controller_json("check", "--revision", pr)
    assert code == 2 and preview["revision"]["sha"] == pr
    assert any("+7.0.0" in t["diff"] for t in preview["apps"][0]["check"]["tasks"])
    dry = converged_app.controller("sync", "--dry-run", "--revision", pr)
    assert dry.returncode == 2 and "not applied (preview)" in dry.stdout
    assert converged_app.host_file("h1", VERSION).read_text() == "1.0.0\n"

    gitops = converged_app.work / "gitops.yml"
    gitops.write_text(gitops.read_text().replace("policy: apply", "policy: detect"))
    bump_version(converged_app, "8.0.0")
    code, detect = converged_app.controller_json("sync")
    assert code == 2 and detect["apps"][0]["outcome"] == "drifted"
    assert "policy detect" in detect["apps"][0]["message"]
    assert converged_app.host_file("h1", VERSION).read_text() == "1.0.0\n"

    missing = converged_app.controller("check", "--revision", "0" * 40)
    assert missing.returncode == 1 and "not found" in missing.stderr
    unknown = converged_app.controller("check", "--app", "nope")
    assert unknown.returncode == 1 and "no app 'nope'" in unknown.stderr


def test_status_history_show_and_json_tell_the_same_story(converged_app: Fleet) -> None:
    fleet = converged_app
    bump_version(fleet, "2.0.0")  # a sync that applies to every host
    code, result = fleet.controller_json("sync")
    assert code == 0 and result["exit_code"] == 0
    [app] = result["apps"]
    [status] = json.loads(fleet.controller("status", "--json").stdout)
    assert {k: v for k, v in status.items() if k not in ("last_run", "hosts")} == {
        "app": "staging", "policy": "apply", "suspended": False, "suspension": None,
        "applied_revision": result["revision"]["sha"],
        "hosts_at_revision": 2, "hosts_total": 2, "last_run_id": app["run_id"], "state": "converged",
        "reason": None, "detail": app["message"], "failure": None, "health": None, "halt": None, "pin": None}
    assert [(h["host"], h["revision"], h["state"]) for h in status["hosts"]] == [
        ("web1.staging", result["revision"]["sha"], "in-sync"), ("web2.staging", result["revision"]["sha"], "in-sync")]
    shown = json.loads(fleet.controller("show", str(app["run_id"]), "--json").stdout)
    assert shown["outcome"] == "converged" and shown["applied"] is True
    assert {h["host"] for h in shown["hosts"] if h["phase"] == "apply"} == {"web1.staging", "web2.staging"}
    text = fleet.controller("history")
    assert text.returncode == 0 and f"{app['run_id']:>5}  staging" in text.stdout
    # what the other tests read from the store in their own process is what the command prints
    assert json.loads(fleet.controller("history", "--json", "--limit", "1000").stdout) == fleet.runs()
    assert fleet.controller("show", "999").returncode == 1


def test_the_lock_keeps_two_runs_apart(converged_app: Fleet) -> None:
    from controller.lock import hold

    before = converged_app.runs()
    version = converged_app.host_file("h1", VERSION)
    version.write_text("by hand\n")
    with hold(converged_app.state / "controller.lock"):
        started = time.monotonic()
        busy = converged_app.controller("sync", "--wait", "1")
        assert time.monotonic() - started >= 1
    assert busy.returncode == 75
    assert "another run holds" in busy.stderr and busy.stderr.count("\n") == 1
    assert converged_app.runs() == before  # the refused run left no record and touched no host
    assert version.read_text() == "by hand\n"
    assert converged_app.controller("sync").returncode == 0  # the lock is free again: the next run puts it back
    assert version.read_text() == "1.0.0\n"


def test_any_reasonable_repository_works(tmp_path: Path, lab: Lab, age_key: AgeKey) -> None:
    """No gitops.yml, playbook and inventory at the root, a command task check mode cannot verify."""
    repo = tmp_path / "plain"
    repo.mkdir()
    (repo / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Motto\n      ansible.builtin.copy: {content: \"{{ motto }}\\n\", dest: /srv/motto}\n"
        "    - name: Migrate\n      ansible.builtin.command: touch /srv/migrated\n      changed_when: true\n")
    (repo / "hosts").write_text(f"box ansible_host={lab.host('h1').address} ansible_port={lab.port}\n")
    motto = "literal {{ not_a_variable }} text"
    (repo / "group_vars").mkdir()
    (repo / "group_vars/all.yml").write_text(f"motto: !unsafe '{motto}'\nansible_user: root\n"
                                             "ansible_python_interpreter: /usr/bin/python3\n")
    # and without mitogen: the linear strategy with pipelining and ControlPersist is the fallback
    fleet = fleet_on(repo, tmp_path, lab, age_key, "Plain repository", ansible={"strategy": "linear"})
    code, result = fleet.controller_json("check")
    assert code == 2
    [app] = result["apps"]
    assert app["name"] == "site"
    statuses = {t["task"]: t["status"] for t in app["check"]["tasks"]}
    assert statuses == {"Motto": "changed", "Migrate": "unverified"}
    assert not lab.host("h1").path("/srv/migrated").exists()
    assert fleet.controller("sync").returncode == 0
    assert lab.host("h1").path("/srv/motto").read_text() == motto + "\n"
    assert lab.host("h1").path("/srv/migrated").exists()


def test_a_secret_with_template_syntax_is_deployed_literally(converged_app: Fleet) -> None:
    fleet = converged_app
    tricky = secret("{{ lookup('env', 'HOME') }}")
    fleet.encrypt("inventories/staging/group_vars/all/secrets.sops.yml",
                  {"app_db_password": tricky, "app_api_token": secret("token")})
    fleet.push("Tricky secret")
    done = fleet.controller("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'password: "{tricky}"' in fleet.host_file("h1", APP_YML).read_text()


def test_secrets_are_only_decrypted_onto_tmpfs(fleet: Fleet) -> None:
    disk = Path(tempfile.mkdtemp(prefix="controller-test-disk-", dir="/var/tmp"))  # tmp_path is on tmpfs (conftest)
    assert filesystem_type(disk) not in MEMORY_FILESYSTEMS, "this test needs /var/tmp on a persistent disk"
    write_config(fleet, workspace_dir=str(disk))
    try:
        refused = fleet.controller("sync", "--progress")
        assert list(disk.iterdir()) == []  # nothing was decrypted into it
    finally:
        shutil.rmtree(disk)
    assert refused.returncode == 1 and "not tmpfs" in refused.stderr
    assert "==> fetching main" in refused.stderr  # live progress, on stderr
    assert not fleet.host_file("h1", VERSION).exists()


def test_workspaces_are_wiped_after_every_run(converged_app: Fleet) -> None:
    fleet = converged_app
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "controller"), "sync"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    ok = run()
    assert ok.wait(timeout=300) == 0
    assert workspaces(ok.pid) == set()
    fleet.write("playbooks/site.yml", "- hosts: [\n")
    fleet.push("Broken")
    broken = run()
    assert broken.wait(timeout=300) == 1
    assert workspaces(broken.pid) == set()


def test_only_if_changed_returns_at_once_until_the_branch_moves_or_a_check_is_due(converged_app: Fleet) -> None:
    idle = converged_app.controller("sync", "--only-if-changed")
    assert idle.returncode == 0, idle.stderr
    assert "nothing to do: main is still at" in idle.stdout
    assert len(converged_app.runs()) == 1
    code, document = converged_app.controller_json("sync", "--only-if-changed")
    assert code == 0 and document["apps"] == [] and "no drift check is due" in document["idle"]

    sha = bump_version(converged_app, "2.0.0")
    moved = converged_app.controller("sync", "--only-if-changed")
    assert moved.returncode == 0 and converged_app.runs()[0]["revision"] == sha
    assert converged_app.host_file("h1", VERSION).read_text() == "2.0.0\n"

    # a check is not a sync: the fast path does not count it. Run as cron and CI wrappers do, its output
    # through a pipe it did not make: stopping its own children must leave the caller's tee alone
    log = converged_app.root / "check.log"
    env = {**os.environ, "CONTROLLER_CONFIG": str(converged_app.config)}
    teed = subprocess.run(["bash", "-c", f"{BIN / 'controller'} check > >(tee -a {log})"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert teed.returncode == 0, teed.stderr
    deadline = time.monotonic() + 5  # tee finishes on its own after the controller's exit
    while teed.stdout not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "in-sync" in teed.stdout and log.read_text() == teed.stdout
    assert converged_app.controller("sync", "--only-if-changed").stdout.count("nothing to do") == 0
    write_config(converged_app, watch={"drift_check_interval": 1})
    time.sleep(1.2)
    due = converged_app.controller("sync", "--only-if-changed")
    assert due.returncode == 0 and "in-sync" in due.stdout
    # it ran, found what the sync before it found, and took its place (retention): one row for the two
    runs = converged_app.runs()
    assert [(r["mode"], r["folded"]) for r in runs] == [("sync", 2), ("check", 1), ("sync", 1), ("sync", 1)], runs


def test_state_is_private_whatever_the_umask(fleet_app: Fleet) -> None:
    fleet = fleet_app
    shutil.rmtree(fleet.state, ignore_errors=True)  # the controller makes it (the fixture copied warm sources in)
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    done = subprocess.run(["sh", "-c", f"umask 000 && exec {BIN / 'controller'} sync"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert fleet.state.stat().st_mode & 0o777 == 0o700
    for path in fleet.state.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_mode & 0o077 == 0, path


def test_mitogen_keeps_its_source_work_between_runs_and_when_it_cannot_load_the_linear_fallback_converges(
        fleet_app: Fleet) -> None:
    fleet = fleet_app
    shutil.rmtree(fleet.state / "cache", ignore_errors=True)  # cold: no sources of another fleet's run
    assert fleet.controller("check").returncode == 2  # mitogen loads here, and the state dir remembers it
    assert len(list((fleet.state / "cache" / "mitogen-loads").iterdir())) == 1
    # what the multiplexer compiled and minified, by a hash of the source; an entry whose data no longer matches the
    # hash it was written with (a disk's fault) is a miss, written again: what reaches the hosts is made afresh
    [kept] = (fleet.state / "cache").glob("mitogen-sources-*")
    entries = {entry.name for entry in kept.iterdir()}
    assert len(entries) > 20, entries
    # each module as it was compressed for the hosts too (zlib at level 9), target code included
    sent = [zlib.decompress(data[32:]) for data in map(Path.read_bytes, kept.iterdir()) if data[32:34] == b"\x78\xda"]
    assert any(b"def init_child(" in source for source in sent), len(sent)
    for entry in kept.iterdir():
        entry.write_bytes(entry.read_bytes()[:32] + b"raise ImportError('damaged')\n")
    # a mitogen that refuses to load, as it does on an ansible-core it does not support: a real import failure
    shadow = fleet.root / "shadow" / "ansible_mitogen"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('this ansible-core is not supported')\n")
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config), "PYTHONPATH": str(shadow.parent)}
    done = subprocess.run([str(BIN / "controller"), "sync"], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("falling back to the linear strategy") == 1
    assert "this ansible-core is not supported" in done.stderr
    for host in ("h1", "h2"):
        assert fleet.host_file(host, VERSION).read_text() == "1.0.0\n"
    assert fleet.controller("check").returncode == 0  # and the default strategy agrees: nothing to change
    # the second mitogen run met the same sources under the same names, and wrote each of them whole again
    assert {entry.name for entry in kept.iterdir()} == entries
    for entry in kept.iterdir():
        data = entry.read_bytes()
        assert hashlib.sha256(data[32:]).digest() == data[:32], entry


def test_a_task_as_the_login_user_runs_between_tasks_that_become_root(tmp_path: Path, lab: Lab,
                                                                      age_key: AgeKey) -> None:
    """mitogen reaches root through the login user's interpreter, which the strategy leaves unprepared for modules
    until a ``become: false`` task asks for it (controller_linear.Relays)."""
    repo = tmp_path / "relayed"
    repo.mkdir()
    (repo / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  become: true\n  tasks:\n"
        "    - {name: As root, ansible.builtin.copy: {content: \"root\\n\", dest: /srv/as-root}}\n"
        "    - {name: As the login user, become: false,\n"
        "       ansible.builtin.copy: {content: \"login\\n\", dest: /home/deploy/as-login}}\n"
        "    - {name: As root again, ansible.builtin.copy: {content: \"root\\n\", dest: /srv/as-root-again}}\n")
    (repo / "hosts").write_text(f"box ansible_host={lab.host('h1').address} ansible_port={lab.port} "
                                "ansible_user=deploy ansible_python_interpreter=/usr/bin/python3\n")
    fleet = fleet_on(repo, tmp_path, lab, age_key, "Root, then the login user, then root")
    code, result = fleet.controller_json("check")
    assert code == 2, result
    [app] = result["apps"]
    assert {t["task"]: t["status"] for t in app["check"]["tasks"]} == {
        "As root": "changed", "As the login user": "changed", "As root again": "changed"}
    done = fleet.controller("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    host = lab.host("h1")
    owners = {path: host.path(path).stat().st_uid for path in ("/srv/as-root", "/home/deploy/as-login",
                                                                "/srv/as-root-again")}
    deploy = host.path("/home/deploy").stat().st_uid
    assert owners == {"/srv/as-root": 0, "/home/deploy/as-login": deploy, "/srv/as-root-again": 0}, owners
    assert deploy != 0
    assert fleet.controller("check").returncode == 0


def test_limit_reconciles_only_the_hosts_named_and_the_store_keeps_the_others(converged_app: Fleet) -> None:
    fleet = converged_app
    for host in ("h1", "h2"):
        config = fleet.host_file(host, APP_YML)
        config.write_text(config.read_text().replace("workers: 2", "workers: 64"))
    code, result = fleet.controller_json("sync", "--limit", "web1.staging")
    [app] = result["apps"]
    assert code == 0 and app["applied_to"] == {"web1.staging": "drifted"}, app
    assert [h["host"] for h in app["check"]["hosts"]] == ["web1.staging"]
    assert "workers: 2" in fleet.host_file("h1", APP_YML).read_text()
    assert "workers: 64" in fleet.host_file("h2", APP_YML).read_text()  # not touched, not even checked
    [status] = json.loads(fleet.controller("status", "--json").stdout)
    assert sorted(h["host"] for h in status["hosts"]) == ["web1.staging", "web2.staging"]  # none forgotten
    code, result = fleet.controller_json("check", "--limit", "web*:!web1.staging")
    assert code == 2 and [h["host"] for h in result["apps"][0]["check"]["hosts"]] == ["web2.staging"]
    refused = fleet.controller("sync", "--limit", "web1.staging", "--verify-first")
    assert refused.returncode == 64 and "--limit" in refused.stderr
    # a new revision (its syntax check the first pass of the process that checks and applies it): the same
    bump_version(fleet, "2.0.0")
    code, result = fleet.controller_json("sync", "--limit", "web1.staging")
    assert code == 0 and result["apps"][0]["applied_to"] == {"web1.staging": "new revision"}, result
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")] == ["2.0.0\n", "1.0.0\n"]


def test_a_copy_or_template_asks_the_host_for_no_mime_type_or_file_attributes(converged_app: Fleet) -> None:
    fleet = converged_app
    host = fleet.lab.host("h1")
    for tool in ("file", "lsattr"):  # each call of either, logged on the host itself, then made as asked
        fleet.host_file("h1", f"/srv/{tool}").write_text(
            f'#!/bin/sh\necho "{tool} $*" >> /srv/stat-tools.log\nexec /usr/bin/{tool} "$@"\n')
        done = fleet.lab.ssh(host, f"install -m 755 /srv/{tool} /usr/local/bin/{tool}")
        assert done.returncode == 0, done.stderr
    log = fleet.host_file("h1", "/srv/stat-tools.log")
    # the copy and template tasks stat their destination first: with the controller's strategy, checksum only
    assert fleet.controller("check").returncode == 0
    assert not log.exists() or log.read_text() == ""
    # Ansible's own linear strategy asks the stat for the MIME type (file) and the attributes (lsattr) each time
    write_config(fleet, ansible={"strategy": "linear"})
    assert fleet.controller("check").returncode == 0
    called = log.read_text().splitlines()
    assert any(c.startswith("file ") for c in called) and any(c.startswith("lsattr ") for c in called), called


# a repository's own action plugin, run in each worker Ansible forks: it fails where the objects the worker shares
# with the playbook's process are still the cyclic collector's to walk (and so to copy, page by page)
HEAP_FROZEN = """\
import gc

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        if not gc.get_freeze_count():
            return {"failed": True, "msg": "nothing frozen: this worker's collector walks the heap it shares"}
        return {"changed": False}
"""


def test_the_strategy_freezes_the_playbook_s_heap_before_it_forks_workers(converged_app: Fleet) -> None:
    fleet = converged_app
    fleet.write("playbooks/action_plugins/heap_frozen.py", HEAP_FROZEN)
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Look at the worker's heap\n  heap_frozen:\n")
    fleet.push("A task that looks at the heap its worker inherited")
    done = fleet.controller("check")
    assert done.returncode == 0, done.stdout + done.stderr
    # Ansible's own linear strategy forks each worker from a heap the collector still walks
    write_config(fleet, ansible={"strategy": "linear"})
    done = fleet.controller("check")
    assert done.returncode == 2 and "nothing frozen" in done.stdout, done.stdout + done.stderr  # failed tasks: partial


# a repository's own action plugin, run in a worker: it fails unless the galaxy CLI was imported as ``expected``
GALAXY_IMPORTED = """\
import sys

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        imported = "ansible.cli.galaxy" in sys.modules
        if imported != self._task.args["expected"]:
            return {"failed": True, "msg": f"the galaxy CLI imported: {imported}"}
        return {"changed": False}
"""

# a module from a collection vendored beside the playbooks, as public collections ship theirs
COLLECTION_MODULE = """\
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    module.exit_json(changed=False, greeting="hello from acme.probe")


if __name__ == "__main__":
    main()
"""


def test_the_galaxy_cli_is_imported_only_for_a_module_from_a_collection_and_then_once(converged_app: Fleet) -> None:
    fleet = converged_app
    fleet.write("playbooks/action_plugins/galaxy_imported.py", GALAXY_IMPORTED)
    fleet.write("playbooks/collections/ansible_collections/acme/probe/plugins/modules/hello.py", COLLECTION_MODULE)
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + """
- name: No module from a collection ran yet
  galaxy_imported: {expected: false}
- name: A module from a collection
  acme.probe.hello:
  register: probe
- name: It ran on the host
  ansible.builtin.assert: {that: probe.greeting == "hello from acme.probe"}
- name: The playbook's process imported the galaxy CLI before it forked that module's worker, for every later one
  galaxy_imported: {expected: true}
""")
    fleet.push("A module from a vendored collection, between two looks at what the workers imported")
    done = fleet.controller("check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ssh_compresses_only_where_the_inventory_asks(converged_app: Fleet) -> None:
    fleet = converged_app
    address = fleet.lab.host("h1").address

    def ssh_to_h1_compressed_during(*args: str) -> set[bool]:
        """Whether each ssh to h1 that Ansible's playbook started during ``controller ARGS`` was asked to compress,
        read from /proc (not the controller's own look at the hosts after a check, which never compresses)."""
        seen: set[bool] = set()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    with contextlib.suppress(OSError):
                        argv = Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
                        if Path(argv[0].decode()).name == "ssh" and address.encode() in argv and \
                                b"controller-ansible-playbook" in Path("/proc", str(parent(int(pid))),
                                                                      "cmdline").read_bytes():
                            seen.add(b"Compression yes" in argv)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            done = fleet.controller(*args)
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            stop.set()
            sampler.join()
        return seen

    # what mitogen sends is compressed already: by default ssh does not compress it again
    assert ssh_to_h1_compressed_during("check") == {False}
    # an inventory that wants it (a slow link) has it, as mitogen's own default would
    fleet.write("inventories/staging/group_vars/all/ssh.yml", "mitogen_ssh_compression: true\n")
    fleet.push("Compress ssh on this slow link")
    assert ssh_to_h1_compressed_during("check") == {True}
