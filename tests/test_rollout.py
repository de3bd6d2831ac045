"""Rollouts in batches (gitops.yml ``rollout:``) on real lab hosts and a real remote: a canary batch, a health check
gating the next batch, a halt that leaves the rest untouched, a rollback to the revision each host had before, and
a halted revision that is not applied again until the branch moves; an app that depends on it held meanwhile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from controller.errors import ControllerError
from controller.source.apps import load_apps
from lab.repository import git
from tests.conftest import APP_YML, VERSION, Fleet, bump_version, write_config
from tests.support.browser import chromium, served
from tests.support.daemon import daemon, free_port, runs, wait_for, watch_config
from tests.support.processes import PlaybookWatch
from tests.support.receiver import Receiver

BROKEN = f"if grep -q broken {VERSION}; then echo version $(cat {VERSION}) does not start; exit 2; fi"
HOLD = "/srv/opt/shop/HOLD"  # while on a host, its health check waits (so the test can look at the rollout)


def test_a_commit_that_fails_its_canary_s_health_is_rolled_back_there_and_reaches_no_other_host(
        converged_app: Fleet, tmp_path: Path) -> None:
    fleet = converged_app
    receiver = Receiver()
    write_config(fleet, notify=[{"url": receiver.url}])
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][0].update(health=[{"command": BROKEN, "retries": 0}],
                             rollout={"batches": [1, "100%"], "on_failure": "rollback"})
    # production (h3) is applied only once staging converged and is healthy at the same revision
    gitops["apps"].append({"name": "production", "playbook": "playbooks/site.yml",
                           "inventory": "inventories/production", "depends_on": ["staging"]})
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    good = fleet.push("Roll staging out in batches, behind a health check; production after it")
    first = fleet.sync()
    assert first["exit_code"] == 0, first
    assert [a["name"] for a in first["apps"]] == ["staging", "production"]
    production = fleet.deployed("h3")
    assert last_run(fleet)["summary"]["rollout"]["batches"] == [["web1.staging"], ["web2.staging"]]
    before = {h: fleet.deployed(h) for h in ("h1", "h2")}

    # the pull request's preview says which batches and checks would gate it; then it is merged
    broken = bump_version(fleet, "2.0-broken", ref="pr")
    preview = fleet.controller("check", "--revision", "pr", "--format", "markdown")
    assert preview.returncode == 2, preview.stdout + preview.stderr
    assert ("**Rollout:** 2 batch(es) over the 2 host(s) it would apply to: `web1.staging` → `web2.staging`; each "
            f'must pass `command "{BROKEN}"` before the next starts; a failed batch is rolled back to the revision '
            "its hosts ran before.") in preview.stdout
    git(fleet.work, "push", "-q", "origin", "HEAD:main")
    halted = fleet.sync()
    app = halted["apps"][0]
    assert (halted["exit_code"], app["outcome"], app["reason"]) == (1, "failed", "HealthCheckFailed"), app
    assert "halted at batch 1 of 2: web1.staging: health unhealthy: command" in app["message"]
    assert "version 2.0-broken does not start" in app["message"]
    assert f"rolled back web1.staging to {good[:12]}" in app["message"]
    assert "not touched: web2.staging" in app["message"]
    # the canary is back where it was and healthy; the other host never got the commit
    assert fleet.host_file("h1", VERSION).read_text() == before["h1"][0]
    assert fleet.deployed("h2") == before["h2"]
    waiting = halted["apps"][1]
    assert (waiting["name"], waiting["outcome"], waiting["reason"]) == ("production", "drifted", "DependencyNotReady")
    assert "not applied to web1.prod: it depends on staging, which is failed, HealthCheckFailed" in waiting["message"]
    assert fleet.deployed("h3") == production
    status = fleet.status_of("staging")
    assert status["halt"]["revision"] == broken and status["halt"]["last_good"] == good
    assert {h["host"]: (h["revision"], h["health"]) for h in status["hosts"]} == {
        "web1.staging": (good, "healthy"), "web2.staging": (good, "healthy")}
    assert f"{broken[:12]} halted" in fleet.controller("status").stdout
    shown = fleet.controller("show", str(app["run_id"])).stdout
    assert "web1.staging  applied in batch 1; health unhealthy: command" in shown
    assert f"rolled back to {good[:12]}" in shown and "web2.staging  not touched (halted before its batch)" in shown

    # the same head again (as watch's next cycle would): never applied again, announced once; a hand edit on a host
    # at the last good revision is healed there, at that revision
    fleet.host_file("h2", APP_YML).write_text("hand-edited while the rollout is halted\n")
    again = fleet.sync()
    held = again["apps"][0]
    assert again["apps"][1]["reason"] == "DependencyNotReady" and fleet.deployed("h3") == production
    assert (held["outcome"], held["reason"], held["applied_to"]) == ("drifted", "HealthCheckFailed",
                                                                    {"web2.staging": "drifted"}), held
    assert f"drift healed at {good[:12]}, the last good revision, while {broken[:12]} halted" in held["message"]
    assert "not applied again until the branch moves" in held["message"]
    assert fleet.host_file("h2", APP_YML).read_text() != "hand-edited while the rollout is halted\n"
    assert fleet.deployed("h2") == before["h2"]
    assert fleet.host_file("h1", VERSION).read_text() == before["h1"][0]
    assert last_run(fleet)["revision"] == good
    assert receiver.events("staging") == ["revision-applied", "run-failed", "drift-corrected"]
    assert not fleet.sync()["apps"][0]["applied_to"]  # nothing left to heal; still held
    # production alone (--app) reads staging's hosts from the store: not converged at the head, so held too
    alone = json.loads(fleet.controller("sync", "--app", "production", "--json").stdout)["apps"][0]
    assert (alone["outcome"], alone["reason"]) == ("drifted", "DependencyNotReady"), alone
    assert f"it depends on staging, which is not converged and healthy at {broken[:12]}" in alone["message"]
    assert fleet.deployed("h3") == production

    # the dashboard tells the rollout host by host, and the app's page the halt
    port = free_port()
    with served(fleet.config, port), chromium(tmp_path / "chromium") as browser:
        browser.get(f"http://127.0.0.1:{port}/runs/{app['run_id']}")
        assert "2 batch(es), 1 applied, halted" in browser.find_element(By.ID, "rollout").text
        rows = {row.get_attribute("data-host"): row.text
                for row in browser.find_elements(By.CSS_SELECTOR, "tr.rollout-host")}
        assert "health unhealthy: command" in rows["web1.staging"] and f"rolled back to {good[:12]}" in rows[
            "web1.staging"]
        assert "not touched (halted before its batch)" in rows["web2.staging"]
        browser.get(f"http://127.0.0.1:{port}/apps/staging")
        assert f"halted {broken[:12]}" in browser.find_element(By.ID, "halt").text

    # the fix rolls out in batches to every host, and the halt is history
    fixed = bump_version(fleet, "2.1")
    done = fleet.controller("sync", "--progress")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("staging: batch 1 of 2: web1.staging", "staging: batch 1 of 2 done: 1 host(s) applied, healthy",
                 "staging: batch 2 of 2: web2.staging", "staging: batch 2 of 2 done: 1 host(s) applied, healthy"):
        assert f"==> {step}\n" in done.stderr, done.stderr
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2", "h3")] == ["2.1\n"] * 3
    assert last_run(fleet)["summary"]["rollout"]["done"] == 2
    status = fleet.status_of("staging")
    assert status["halt"] is None and {h["revision"] for h in status["hosts"]} == {fixed}
    assert receiver.events("staging") == ["revision-applied", "run-failed", "drift-corrected", "revision-applied",
                                          "recovered"]
    receiver.server.shutdown()


def test_watch_shows_a_rollout_batch_by_batch_halts_it_once_and_heals_the_untouched_at_the_last_good_revision(
        converged_app: Fleet, tmp_path: Path) -> None:
    fleet = converged_app
    receiver, port = Receiver(), free_port()
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][0].update(
        health=[{"command": f"while test -e {HOLD}; do sleep 0.2; done; {BROKEN}", "retries": 0, "timeout": 120}],
        rollout={"batches": [1, "100%"], "on_failure": "halt"})
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    good = fleet.push("Roll staging out in batches, behind a health check; halt, no rollback")
    assert fleet.sync()["exit_code"] == 0
    untouched = fleet.deployed("h2")
    # the commit is pushed before the daemon starts: its first cycle finds it; then only the verify interval runs
    watch_config(fleet, poll_interval=0, verify_interval=2, backoff=1, backoff_max=1, listen=f"127.0.0.1:{port}",
                 notify=[{"url": receiver.url}])
    fleet.host_file("h1", HOLD).write_text("")
    broken = bump_version(fleet, "2.0-broken")
    with daemon(fleet, port) as watch, chromium(tmp_path / "chromium") as browser:
        # the canary's health check is under way: the dashboard shows where the rollout stands
        def checking() -> bool:
            running = [r for r in runs(fleet) if r["finished"] is None and r["revision"] == broken]
            if not running:
                return False
            status, body = watch.request("GET", f"/api/runs/{running[0]['id']}")
            live = json.loads(body)["live"] if status == 200 else None
            return bool(live and live["rollout"] and live["rollout"]["step"] == "checking health")
        wait_for("the canary's health check", checking, timeout=120)
        run_id = next(r["id"] for r in runs(fleet) if r["revision"] == broken)
        browser.get(f"{watch.url}/runs/{run_id}")
        assert browser.find_element(By.ID, "rollout").text == "Rollout: batch 1 of 2, checking health"
        assert rollout_rows(browser) == {
            "web1.staging": "1 of 2 web1.staging running applied in batch 1; checking health",
            "web2.staging": "2 of 2 web2.staging waiting for its batch"}
        # the check fails once let go: the page follows the halt without a reload; the canary is left as it is
        fleet.host_file("h1", HOLD).unlink()
        wait_for("the halted run", lambda: next(r for r in runs(fleet) if r["id"] == run_id)["finished"] is not None,
                 timeout=120)
        halted = next(r for r in runs(fleet) if r["id"] == run_id)
        assert (halted["outcome"], halted["reason"]) == ("failed", "HealthCheckFailed")
        told = {"web1.staging": "1 of 2 web1.staging failed applied in batch 1; health unhealthy: command "
                                f'"while test -e {HOLD}; do sleep 0.2; done; {BROKEN}": exit status 2: '
                                "version 2.0-broken does not start",
                "web2.staging": "2 of 2 web2.staging not touched (halted before its batch)"}
        wait_for("the page to tell the halt", lambda: text_of(browser, "rollout") == "Rollout: 2 batch(es), 1 "
                 "applied, halted" and rollout_rows(browser) == told, timeout=30)
        canary = fleet.deployed("h1")
        assert canary[0] == "2.0-broken\n"

        # not retried: the daemon waits for the branch, and its verify interval heals a hand edit at the last
        # good revision on the host the halted revision never reached
        fleet.host_file("h2", APP_YML).write_text("hand-edited while the rollout is halted\n")
        wait_for("the heal at the last good revision",
                 lambda: fleet.host_file("h2", APP_YML).read_text() != "hand-edited while the rollout is halted\n",
                 timeout=60)
        assert "revision halted; the last good revision stays applied until the branch moves" in watch.log()
        assert "retrying" not in watch.log()
        assert watch.stop() == 0
    later = [r for r in runs(fleet) if r["id"] > run_id]
    assert later and {r["revision"] for r in later} == {good}, later
    assert fleet.deployed("h1") == canary and fleet.deployed("h2") == untouched
    assert {h["host"]: (h["revision"], h["health"]) for h in fleet.status_of("staging")["hosts"]} == {
        "web1.staging": (broken, "unhealthy"), "web2.staging": (good, "healthy")}
    assert receiver.events("staging").count("run-failed") == 1
    receiver.server.shutdown()


def test_independent_apps_run_at_once_sharing_the_forks_and_a_dependent_one_after(converged_app: Fleet) -> None:
    fleet = converged_app
    write_config(fleet, ansible={"parallel_apps": 2, "forks": 4})
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"].append({"name": "production", "playbook": "playbooks/site.yml",
                           "inventory": "inventories/production"})
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    bump_version(fleet, "2.0")

    def synced() -> tuple[PlaybookWatch, str]:
        with PlaybookWatch() as watch:
            done = fleet.controller("sync", "--progress")
        assert done.returncode == 0, done.stdout + done.stderr
        assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2", "h3")] == [f"{version}\n"] * 3
        return watch, done.stderr + done.stdout

    # staging (h1, h2) and production (h3) depend on nothing: played at the same moment, 2 forks each of 4
    version = "2.0"
    watch, said = synced()
    assert frozenset({"staging", "production"}) in watch.together, watch.together
    staging, production = (last_run(fleet, app) for app in ("staging", "production"))
    assert production["started"] < staging["finished"] and staging["started"] < production["finished"]
    assert watch.forks == {"2"}, watch.forks
    # each writes ansible-runner's files in a directory of its own (two starting in one would race)
    apart = watch.artifacts
    assert apart["staging"] and apart["production"] and not apart["staging"] & apart["production"], apart
    assert "==> up to 2 apps at once (staging, production, as depends_on allows), each playbook with 1/2 of the " \
           "forks" in said
    # the live lines each name their app; the report tells each app apart, staging first as gitops.yml lists it
    lines = [line for line in said.splitlines() if line.startswith(("==> staging", "==> production", "    ["))]
    assert all(line.startswith(("==> staging:", "==> production:", "    [staging ", "    [production "))
               for line in lines), lines
    assert said.index("staging rollout of") < said.index("production rollout of"), said

    # production depends on staging: its run starts once staging's has ended (the processes a playbook forks may
    # outlive it by a moment, so the samples are no measure here)
    gitops["apps"][1]["depends_on"] = ["staging"]
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    version = "2.1"
    bump_version(fleet, version)
    synced()
    staging, production = (last_run(fleet, app) for app in ("staging", "production"))
    assert staging["finished"] <= production["started"], (staging, production)


def text_of(browser: Any, element: str) -> str:
    """An element's text, read again after live.js swapped the page's main part."""
    try:
        return str(browser.find_element(By.ID, element).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def rollout_rows(browser: Any) -> dict[str, str]:
    """Each host's row of the page's rollout table, its text on one line ({} while live.js swaps the page)."""
    try:
        return {row.get_attribute("data-host"): " ".join(row.text.split())
                for row in browser.find_elements(By.CSS_SELECTOR, "tr.rollout-host")}
    except StaleElementReferenceException:
        return {}


@pytest.mark.parametrize(("rollout", "problem"), [
    ({"batches": [0, "100%"]}, "apps[0].rollout: batches: expected a number of hosts (1 or more) or a share"),
    ({"batches": ["150%"]}, "apps[0].rollout: batches: expected a number of hosts (1 or more) or a share"),
    ({"batches": []}, "apps[0].rollout: batches: lists no step"),
    ({"on_failure": "retry"}, "apps[0].rollout.on_failure: must be one of halt, rollback, got 'retry'"),
])
def test_a_rollout_written_wrong_is_one_line_naming_its_key(tmp_path: Any, rollout: dict[str, Any],
                                                            problem: str) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts").write_text("web1\n")
    (tmp_path / "gitops.yml").write_text(yaml.safe_dump({"apps": [
        {"name": "web", "playbook": "site.yml", "inventory": "hosts", "rollout": rollout}]}))
    with pytest.raises(ControllerError) as raised:
        load_apps(tmp_path)
    assert len(raised.value.message.splitlines()) == 1 and problem in raised.value.message



@pytest.mark.parametrize(("depends", "problem"), [
    ({"a": ["b"], "b": ["a"]}, "gitops.yml: depends_on cycle: a -> b -> a"),
    ({"a": ["a"], "b": []}, "gitops.yml: depends_on cycle: a -> a"),
    ({"a": [], "b": ["c"]}, "gitops.yml: apps[1].depends_on[0]: no app 'c' (apps: a, b)"),
])
def test_depends_on_a_cycle_or_an_unknown_app_is_refused_when_gitops_yml_is_read(
        tmp_path: Any, depends: dict[str, list[str]], problem: str) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts").write_text("web1\n")
    (tmp_path / "gitops.yml").write_text(yaml.safe_dump({"apps": [
        {"name": name, "playbook": "site.yml", "inventory": "hosts", "depends_on": upstream}
        for name, upstream in depends.items()]}))
    with pytest.raises(ControllerError) as raised:
        load_apps(tmp_path)
    assert raised.value.message == problem



def last_run(fleet: Fleet, app: str = "staging") -> dict[str, Any]:
    return next(r for r in fleet.runs() if r["app"] == app)

