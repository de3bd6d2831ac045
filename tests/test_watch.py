"""`controller watch` end to end: real webhooks over HTTP, a bare remote, lab hosts, SIGTERM."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

import yaml

from controller.vocabulary import Provider
from controller.web.webhooks import sign
from tests.conftest import APP_YML, Fleet, build_fleet, bump_version
from tests.support.daemon import (
    daemon,
    free_port,
    github_push,
    runs,
    version_is,
    wait_for,
    watch_config,
)
from tests.support.metrics import promtool
from tests.support.processes import running, workspaces
from tests.support.receiver import EXTERNAL, TOKEN, Forge, Receiver, forge_targets
from tests.support.webhooks import SECRETS, SENDERS, delivery


def test_signed_webhook_applies_the_push_and_forgeries_trigger_nothing(converged_app: Fleet) -> None:
    fleet = converged_app  # synced once (one run in the store): the daemon's first cycle finds nothing to do
    hooks = []
    for provider, secret in SECRETS.items():  # a secret of its own for every provider
        fleet.root.joinpath(f"{provider}.secret").write_bytes(secret + b"\n")
        hooks.append({"provider": provider.value, "secret_file": f"{provider}.secret"})
    secret = SECRETS[Provider.GITHUB]
    port = free_port()
    watch_config(fleet, listen=f"127.0.0.1:{port}", webhooks=hooks, max_body_bytes=4096)
    with daemon(fleet, port) as watch:
        wait_for("the first cycle", watch.cycled)
        idle = watch.log().count("nothing to do: main is still at")  # that first cycle's, logged before it settles
        assert idle == 1, watch.log()
        sha = bump_version(fleet, "2.0.0")
        body = json.dumps(github_push(sha)).encode()

        forged = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d1", "X-Hub-Signature-256": sign(body, b"guess")}
        assert watch.hook("github", github_push(sha), forged) == (
            401, {"error": "X-Hub-Signature-256 does not match the body (wrong secret?)"})
        assert watch.hook("github", github_push(sha), {"X-GitHub-Event": "push"})[0] == 401
        assert watch.hook("generic", github_push(sha), {})[0] == 401
        assert watch.hook("gitlab", github_push(sha), {"X-Gitlab-Event": "Push Hook",
                                                       "X-Gitlab-Token": secret.decode()})[0] == 401
        huge = json.dumps({**github_push(sha), "padding": "x" * 10000}).encode()
        status, _ = watch.request("POST", "/hooks/github", huge, {"X-Hub-Signature-256": sign(huge, secret)})
        assert status == 413
        other = json.dumps(github_push(sha, branch="feature")).encode()
        status, answer = watch.request("POST", "/hooks/github", other, {"X-Hub-Signature-256": sign(other, secret)})
        assert status == 200 and "ignored" in json.loads(answer)
        time.sleep(1.5)  # longer than the debounce: anything triggered would have started
        assert len(runs(fleet)) == 1
        assert version_is(fleet, "1.0.0")()

        signed = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d2", "X-Hub-Signature-256": sign(body, secret)}
        status, answer = watch.request("POST", "/hooks/github", body, signed)
        assert (status, json.loads(answer)["revision"]) == (202, sha)
        wait_for("the pushed commit on the hosts", version_is(fleet, "2.0.0"))
        wait_for("the cycle to finish", watch.settled)
        latest = runs(fleet)[0]
        assert (latest["trigger"], latest["revision"], latest["outcome"]) == ("webhook", sha, "converged")

        status, answer = watch.request("POST", "/hooks/github", body, signed)  # redelivery
        assert status == 200 and "already received" in json.loads(answer)["ignored"]
        # every other Git host, as it sends and signs a push: each wakes the daemon for one cycle, which finds
        # the branch where it is
        for woken, sender in enumerate(SENDERS, start=1):
            cycles = watch.health()["cycles"]
            path, payload, headers = delivery(sender, sha, SECRETS[Provider(sender.replace("forgejo", "gitea"))],
                                              f"{sender}-d1")
            status, answer = watch.request("POST", path, payload, headers)
            assert status == 202, (sender, answer)
            wait_for(f"the cycle {sender} woke", lambda n=cycles + 1: watch.health()["cycles"] == n and watch.settled())
            # settled means its result is logged (and its success recorded), not only that its run ended
            assert watch.log().count("nothing to do: main is still at") == idle + woken, (sender, watch.log())
        assert watch.log().count("nothing to do: main is still at") == idle + len(SENDERS)
        assert SECRETS[Provider.BITBUCKET_CLOUD].decode() not in watch.log()

        status, health = watch.request("GET", "/healthz")
        assert status == 200
        assert json.loads(health)["last_success_age_seconds"] < 60
        text = watch.metrics()
        assert 'controller_runs_total{app="staging",mode="sync",outcome="converged"} 2.0' in text
        assert f'controller_applied_revision_info{{app="staging",revision="{sha}"}} 1.0' in text
        assert 'controller_run_duration_seconds_count{app="staging",mode="sync"} 2.0' in text
        # the version file differed on both before the apply; drift is what is left afterwards: none
        assert 'controller_drifted_hosts{app="staging"} 0.0' in text
        assert 'controller_host_drifted{app="staging",host="web1.staging"} 0.0' in text
        assert 'controller_hosts_behind{app="staging"} 0.0' in text

        # /metrics is what the store says: a check from cron that finds drift, a suspend from the dashboard
        fleet.host_file("h1", APP_YML).write_text("hand-edited\n")
        assert fleet.controller("check").returncode == 2
        text = watch.metrics()
        for line in ('controller_runs_total{app="staging",mode="check",outcome="drifted"} 1.0',
                     'controller_drifted_hosts{app="staging"} 1.0',
                     'controller_host_drifted{app="staging",host="web1.staging"} 1.0',
                     'controller_host_drifted{app="staging",host="web2.staging"} 0.0',
                     'controller_suspended{app="staging"} 0.0'):
            assert line in text, line
        assert watch.act("/apps/staging/suspend", {"reason": "maintenance"}) == 303
        exposition = watch.metrics()
        assert 'controller_suspended{app="staging"} 1.0' in exposition
        assert promtool(exposition.encode()) == ""
        assert watch.stop() == 0
    log = watch.log()
    with daemon(fleet, port) as watch:  # a restart keeps every series as it was
        assert watch.metrics() == exposition
        wait_for("the first cycle (staging is suspended: no run)", lambda: watch.health()["cycles"] == 1
                 and watch.settled())
        assert watch.metrics() == exposition
        assert watch.stop() == 0
    assert len(runs(fleet)) == 3
    assert "refused (401)" in log and secret.decode() not in log


def test_local_push_burst_and_suspend(converged_app: Fleet) -> None:
    fleet = converged_app
    watch_config(fleet, watch_local=True, debounce=0.5)
    with daemon(fleet) as watch:
        wait_for("the first cycle: the fleet is converged already", lambda: "nothing to do" in watch.log())
        sha = bump_version(fleet, "2.0.0")  # no webhook, no poll: only the bare repository's refs moved
        wait_for("the push on the hosts", version_is(fleet, "2.0.0"))
        wait_for("the run to be recorded", lambda: runs(fleet)[0]["revision"] == sha and
                 runs(fleet)[0]["outcome"] is not None)
        assert runs(fleet)[0]["trigger"] == "push"

        before = len(runs(fleet))
        for number in range(20):
            last = bump_version(fleet, f"3.0.{number}")
        wait_for("the burst's last commit on the hosts", version_is(fleet, "3.0.19"))
        wait_for("the last run to finish", lambda: runs(fleet)[0]["outcome"] is not None)
        time.sleep(2)  # a third run would have started by now
        burst = runs(fleet)[: len(runs(fleet)) - before]
        # one or two cycles reconciled; a check a later push of the burst made stale was stopped, applying nothing
        whole = [r for r in burst if r["reason"] != "Superseded"]
        assert 1 <= len(whole) <= 2, burst
        assert not any(r["applied"] for r in burst if r["reason"] == "Superseded"), burst
        assert burst[0]["revision"] == last and burst[0]["outcome"] == "converged"

        suspended = fleet.controller("suspend", "staging", "--reason", "maintenance")
        assert suspended.returncode == 0, suspended.stderr
        count = len(runs(fleet))
        held = bump_version(fleet, "4.0.0")
        wait_for("the daemon to see the push", lambda: watch.log().count("suspended since") >= 1)
        assert len(runs(fleet)) == count and version_is(fleet, "3.0.19")()
        assert watch.stop() == 0

    manual = fleet.controller("sync")
    assert manual.returncode == 0
    assert "app staging is suspended since" in manual.stderr and "maintenance" in manual.stderr
    assert version_is(fleet, "3.0.19")()
    status = json.loads(fleet.controller("status", "--json").stdout)
    assert status[0]["suspended"] is True
    assert fleet.controller("resume", "staging").returncode == 0
    again = fleet.controller("resume", "staging")  # not suspended any more: nothing to do, and said so
    assert again.returncode == 0 and "was not suspended" in again.stdout
    assert fleet.controller("suspend", "stagin").returncode == 1  # a typo is not silently accepted
    assert fleet.controller("sync").returncode == 0
    assert version_is(fleet, "4.0.0")()
    assert runs(fleet)[0]["revision"] == held


SLOW_CHECK = "sleep 60.4321"  # odd lengths: their processes are told apart from anything else on the machine
SLOW_APPLY = "sleep 6.4321"
SLOW_STOPPED = "sleep 60.5432"  # a check the watch is stopped in the middle of


def slow_on_web2(fleet: Fleet, original: str, command: str | None, when: str) -> None:
    """The app role with a first task that runs ``command`` on web2 alone, ``when`` says in which mode."""
    tasks = fleet.work / "roles/app/tasks/main.yml"
    slow = [{"name": "Take a while", "ansible.builtin.command": command, "changed_when": False, "check_mode": False,
             "when": f"{when} and inventory_hostname == 'web2.staging'"}] if command else []
    tasks.write_text("---\n" + (yaml.safe_dump(slow) if slow else "") + original.removeprefix("---\n"))


def test_a_push_during_a_cycle_stops_its_stale_check_but_never_an_apply(converged_app: Fleet) -> None:
    fleet = converged_app
    watch_config(fleet, watch_local=True)
    original = (fleet.work / "roles/app/tasks/main.yml").read_text()
    with daemon(fleet) as watch:
        wait_for("the first cycle: the fleet is converged already", lambda: "nothing to do" in watch.log())
        # a commit whose check takes a minute on web2; a second commit arrives while it runs
        slow_on_web2(fleet, original, SLOW_CHECK, "ansible_check_mode")
        stale = bump_version(fleet, "1.5.0")
        wait_for("the slow check on web2", lambda: running(SLOW_CHECK))
        slow_on_web2(fleet, original, SLOW_APPLY, "not ansible_check_mode")
        pushed = time.monotonic()
        head = bump_version(fleet, "1.6.0")
        wait_for("a run of the new head", lambda: any(r["revision"] == head for r in runs(fleet)), timeout=15)
        print(f"the new head's run started {time.monotonic() - pushed:.1f} s after the push")
        superseded = next(r for r in runs(fleet) if r["revision"] == stale)
        assert (superseded["outcome"], superseded["reason"], superseded["applied"]) == (
            "interrupted", "Superseded", False), superseded
        assert f"superseded by {head[:12]}" in superseded["message"]

        # the new head's apply is under way on web2 when a third commit arrives: it finishes all the same
        wait_for("the slow apply on web2", lambda: running(SLOW_APPLY))
        slow_on_web2(fleet, original, None, "")
        last = bump_version(fleet, "1.7.0")
        wait_for("the third commit on the hosts", version_is(fleet, "1.7.0"))
        wait_for("its run to finish", lambda: runs(fleet)[0]["revision"] == last and runs(fleet)[0]["finished"])
        outcomes = {r["revision"]: (r["outcome"], r["applied"]) for r in runs(fleet)}
        assert outcomes[head] == outcomes[last] == ("converged", True), outcomes
        assert watch.stop() == 0


def test_scheduled_drift_check_corrects_apply_and_reports_detect_once(tmp_path: Path, lab: Any,
                                                                      age_key: Any) -> None:
    fleet = build_fleet(tmp_path / "fleet", lab, age_key, apps=("staging", "production"), app_only=True)
    assert fleet.controller("sync").returncode == 0  # both apps applied once under policy apply
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    for app in gitops["apps"]:
        if app["name"] == "production":
            app["policy"] = "detect"
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    fleet.push("production: detect only")
    generic, slack, github = Receiver(), Receiver(), Forge("github")
    slack_url = fleet.root / "slack.url"
    slack_url.write_text(slack.url + "\n")
    fleet.root.joinpath("forge.token").write_text(TOKEN)
    watch_config(fleet, drift_check_interval=3, ui={"external_url": EXTERNAL},
                 notify=[{"url": generic.url}, {"format": "slack", "url_file": str(slack_url)},
                         *forge_targets({"github": github})])
    try:
        with daemon(fleet) as watch:
            wait_for("the first cycle", lambda: len(fleet.runs()) >= 4 and all(r["outcome"] for r in fleet.runs()))
            staging = fleet.host_file("h1", APP_YML)
            production = fleet.host_file("h3", APP_YML)
            staging.write_text(staging.read_text().replace("workers: 2", "workers: 64"))
            production.write_text(production.read_text().replace("workers: 8", "workers: 99"))
            wait_for("staging corrected", lambda: "workers: 64" not in staging.read_text())
            wait_for("two scheduled checks of production that found the drift", lambda: len(
                [r for r in runs(fleet, "production") if r["trigger"] == "schedule"
                 and r["outcome"] == "drifted"]) >= 2)
            assert "workers: 99" in production.read_text()  # detect: reported, not changed
            assert watch.stop() == 0

        # a detect app is applied only on purpose: `sync --apply --app`, recorded with its policy
        assert fleet.controller("sync", "--apply").returncode == 64  # which app? say it
        held = fleet.controller("sync", "--app", "production")
        assert held.returncode == 2 and "not applied (policy detect)" in held.stdout
        assert "workers: 99" in production.read_text()
        applied = fleet.controller("sync", "--apply", "--app", "production")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "workers: 99" not in production.read_text()
        run = runs(fleet, "production")[0]
        assert (run["mode"], run["trigger"], run["policy"], run["applied"], run["outcome"]) == (
            "sync", "manual", "detect", True, "converged")
        assert run["message"].startswith("policy detect: applied on request")
    finally:
        generic.server.shutdown()
        slack.server.shutdown()
        github.server.shutdown()
    # the commit's status on the forge: each app's outcome when it changed, with a link to the run
    assert github.refused == []
    statuses = {app: [(s["state"], s["target_url"].rpartition("/")[2]) for s in github.statuses
                      if s["context"] == f"controller/{app}"] for app in ("staging", "production")}
    production_runs = {r["outcome"]: str(r["id"]) for r in runs(fleet, "production")}  # newest first: the oldest stays
    assert [state for state, _ in statuses["staging"]] == ["success"]  # corrections at the same commit: still success
    assert statuses["production"] == [("success", production_runs["in-sync"]),
                                      ("failure", production_runs["drifted"]), ("success", str(run["id"]))]
    corrected = [r for r in runs(fleet) if r["summary"].get("corrected") == ["web1.staging"]]
    assert corrected and corrected[0]["trigger"] == "schedule"
    assert generic.events("production").count("drift-found") == 1  # announced once, not every cycle
    assert "drift-corrected" in generic.events("staging")
    [found] = [b for b in generic.bodies if b["event"] == "drift-found"]
    assert found["hosts"]["changed"] == ["web1.prod"] and found["revision"]
    assert found["url"] == f"{EXTERNAL}/runs/{found['run_id']}" and found["subject"] == "production: detect only"
    assert any(":warning: *production*: drift found" in b["text"] for b in slack.bodies)
    everything = json.dumps(generic.bodies + slack.bodies)
    assert all(value not in everything for value in fleet.secrets.values())


def test_failing_cycle_is_retried_then_recovers_and_sigterm_mid_run_exits_cleanly(converged_app: Fleet) -> None:
    fleet = converged_app
    receiver = Receiver()
    port = free_port()
    watch_config(fleet, watch_local=True, listen=f"127.0.0.1:{port}", backoff=1, backoff_max=2,
                 notify=[{"url": receiver.url, "events": ["run-failed", "recovered"]}])
    try:
        with daemon(fleet, port) as watch:
            wait_for("the first cycle", watch.cycled)
            assert version_is(fleet, "1.0.0")()
            playbook = fleet.work / "playbooks/site.yml"
            good = playbook.read_text()
            playbook.write_text(good + "\n  - this is: [not, a play\n")
            bump_version(fleet, "2.0.0")
            wait_for("the failure to be retried", lambda: len(
                [r for r in runs(fleet) if r["reason"] == "SyntaxCheckFailed"]) >= 3)
            status, health = watch.request("GET", "/healthz")
            assert status == 200 and "syntax" in json.loads(health)["last_failure"]
            assert version_is(fleet, "1.0.0")()  # the last good revision stays applied
            assert watch.proc.poll() is None

            playbook.write_text(good)
            fixed = bump_version(fleet, "3.0.0")
            wait_for("the fix on the hosts", version_is(fleet, "3.0.0"))
            wait_for("the recovery to be recorded", lambda: runs(fleet)[0]["revision"] == fixed
                     and runs(fleet)[0]["outcome"] == "converged")
            wait_for("the recovery notice", lambda: receiver.events("staging")[-1:] == ["recovered"])
            assert receiver.events("staging") == ["run-failed", "recovered"]

            # a commit whose check takes a while on web2: the SIGTERM comes while it runs
            slow_on_web2(fleet, (fleet.work / "roles/app/tasks/main.yml").read_text(), SLOW_STOPPED,
                         "ansible_check_mode")
            bump_version(fleet, "4.0.0")
            wait_for("the slow check on web2", lambda: running(SLOW_STOPPED))
            started = time.monotonic()
            assert watch.stop() == 0
            assert time.monotonic() - started < 30
            assert workspaces(watch.proc.pid) == set()
    finally:
        receiver.server.shutdown()
    with open(fleet.state / "controller.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: this would raise if still held
    assert runs(fleet)[0]["reason"] == "Interrupted"
    assert "run-failed" not in receiver.events("staging")[2:]  # a stop is not announced as a failure


def test_an_unreadable_or_empty_webhook_secret_is_one_line(fleet: Fleet) -> None:
    watch_config(fleet, listen=f"127.0.0.1:{free_port()}", webhook_secret_file="missing.secret")
    missing = fleet.controller("watch", timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("missing.secret: No such file or directory")
    (fleet.root / "empty.secret").write_text("\n")
    watch_config(fleet, listen=f"127.0.0.1:{free_port()}", webhook_secret_file="empty.secret")
    empty = fleet.controller("watch", timeout=60)
    assert empty.returncode == 1 and empty.stderr.strip().endswith("empty.secret is empty")
    # GitLab shows its token in clear: the secret that signs GitHub's hooks may not be it
    (fleet.root / "shared.secret").write_text("one-secret-for-both\n")
    watch_config(fleet, listen=f"127.0.0.1:{free_port()}", webhook_secret_file="shared.secret",
                 webhooks=[{"provider": "gitlab", "secret_file": "shared.secret"}])
    shared = fleet.controller("watch", timeout=60)
    assert shared.returncode == 1
    assert shared.stderr.strip().splitlines() == [
        f"controller: watch.webhooks: gitlab's secret ({fleet.root}/shared.secret) is also github's "
        f"({fleet.root}/shared.secret): gitlab sends it in clear, so whoever sees its hooks could sign github's; "
        "give each provider a secret of its own"]
    watch_config(fleet, webhooks=[{"provider": "gitea", "secret_file": "a"}, {"provider": "gitea", "secret_file": "b"}])
    twice = fleet.controller("watch", timeout=60)
    assert twice.returncode == 1 and "watch.webhooks[1].provider: gitea is listed twice" in twice.stderr
