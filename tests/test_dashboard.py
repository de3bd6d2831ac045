"""The dashboard in a real browser: Debian's Chromium, headless, against `controller watch` and `controller serve`
on lab hosts. What is asserted is what a person sees."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from bench.dashboard import fill
from controller.config import HostPort, load_config
from controller.daemon.watch import LogProgress
from controller.state.store import Store
from controller.vocabulary import Kind, Outcome, Reason, Trigger
from controller.web.access import FULL_LINES, GUESS_BURST, Access, Throttle
from controller.web.actions import Actions
from controller.web.dashboard import Dashboard
from controller.web.listener import Listener, Routes
from lab import Lab
from lab.repository import AgeKey
from tests.conftest import APP_YML, BIN, VERSION, Fleet, build_fleet, bump_version, write_config
from tests.support.browser import chromium, mid_navigation, request, served
from tests.support.daemon import daemon, free_port, wait_for, watch_config
from tests.support.metrics import promtool
from tests.support.processes import running, workspaces

TOKEN = "dashboard-test-token-0123456789"
ALICE = "alice-s-own-dashboard-token-0123"
VIEWER = "a-read-only-dashboard-token-0123"
# CONTROLLER_SCREENSHOTS=docs makes the watch test save the three main pages for the README
SCREENSHOTS = os.environ.get("CONTROLLER_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module."""
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def screenshot(driver: webdriver.Chrome, name: str) -> None:
    """Save the page as docs/dashboard-NAME.png, as tall as its content (for the README)."""
    height = min(int(driver.execute_script("return document.body.scrollHeight")) + 16, 1600)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(f"{SCREENSHOTS}/dashboard-{name}.png")
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def until(driver: webdriver.Chrome, seconds: float, predicate: Callable[[webdriver.Chrome], object]) -> None:
    """Wait for what the page shows, asking again when a live update or a form's redirect replaced what was being
    read (mid_navigation)."""
    def asked(d: webdriver.Chrome) -> object:
        try:
            return predicate(d)
        except WebDriverException as error:
            if not mid_navigation(error):
                raise
            return False

    WebDriverWait(driver, seconds, poll_frequency=0.25).until(asked)


def click(driver: webdriver.Chrome, element_id: str) -> None:
    """Click a button, again if the page's live update swapped it out just before."""
    until(driver, 10, lambda d: d.find_element(By.ID, element_id).click() or True)


def log_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    """Log out of the dashboard, then in with ``token``, onto the staging app's page."""
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    until(driver, 10, lambda d: d.find_elements(By.ID, "token"))
    driver.get(base + "/apps/staging")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    # the login page answers at the same address: wait for the app's own page, whatever the holder may do there
    until(driver, 10, lambda d: not d.find_elements(By.ID, "token")
          and d.find_elements(By.CSS_SELECTOR, "div.actions, #read-only"))


def audit_trail(fleet: Fleet) -> list[dict[str, object]]:
    """``controller history --audit --json``."""
    found: list[dict[str, object]] = json.loads(fleet.controller("history", "--audit", "--json").stdout)
    return found


def host_state(driver: webdriver.Chrome, host: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr.host[data-host="{host}"]')
    return rows[0].get_attribute("data-state") if rows else None


def first_run(fleet: Fleet, app: str) -> dict[str, object]:
    """The app's oldest run in the store."""
    return next(r for r in reversed(fleet.runs()) if r["app"] == app)


def no_canary(fleet: Fleet, *sources: str) -> None:
    for source in sources:
        for plaintext in fleet.secrets.values():
            assert plaintext not in source


def test_drift_shown_and_synced_from_the_page_of_a_running_watch(tmp_path: Path, lab: Lab, age_key: AgeKey,
                                                                  browser: webdriver.Chrome) -> None:
    fleet = build_fleet(tmp_path / "fleet", lab, age_key, apps=("staging", "production"), app_only=True)
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][1]["policy"] = "detect"  # production: only report, until someone applies it on purpose
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    fleet.push("production: detect only")
    port = free_port()
    watch_config(fleet, listen=f"127.0.0.1:{port}", drift_check_interval="1h")
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    with daemon(fleet, port) as watch:
        wait_for("the first sync", lambda: [r["outcome"] for r in fleet.runs()] == ["drifted", "converged"])
        wait_for("the first cycle to finish", watch.settled)

        browser.get(base + "/")
        row = browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="staging"]')
        assert "converged" in row.text and "2/2" in row.text
        assert re.search(r"in [3-5]\d min$", row.text)  # the next drift check, an hour after the first sync
        assert "drifted" in browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="production"]').text
        # health beside the state: the example's production app has a health check, staging none
        assert browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="production"] td.health').text == "healthy"
        assert browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="staging"] td.health').text == "-"
        seen.append(browser.page_source)
        maintenance = fleet.host_file("h3", "/srv/opt/shop/run/maintenance")  # never applied: no directory yet
        maintenance.parent.mkdir(parents=True)
        maintenance.write_text("disk swap\n")
        assert fleet.controller("check", "--app", "production").returncode == 2  # drift too: 2 before 4
        browser.get(base + "/apps/production")
        health = browser.find_element(By.CSS_SELECTOR, 'tr.host[data-host="web1.prod"] td.health').text
        assert health.startswith("unhealthy") and "exit status 1: in maintenance" in health, health
        assert "unhealthy" in browser.find_element(By.TAG_NAME, "h1").text
        maintenance.unlink()  # out of maintenance before production is applied below
        browser.get(base + "/")

        fleet.host_file("h1", APP_YML).write_text("hand-edited: by someone at 3am\n")
        assert fleet.controller("check").returncode == 2
        check = next(r for r in fleet.runs() if r["app"] == "staging")

        # the link again if the fleet page's live update (the check just recorded) swapped it out just before
        until(browser, 10, lambda d: d.find_element(By.LINK_TEXT, "staging").click() or True)
        until(browser, 10, lambda d: host_state(d, "web1.staging") == "drifted")  # a click does not wait for the page
        assert host_state(browser, "web2.staging") == "in-sync"
        # the app's page shows that check's drift inline, diff and all
        assert f"run #{check['id']}" in browser.find_element(By.ID, "latest-drift").text
        inline = browser.find_element(By.CSS_SELECTOR, 'section.task[data-host="web1.staging"]')
        assert "-hand-edited: by someone at 3am" in inline.text
        seen.append(browser.page_source)
        if SCREENSHOTS:
            browser.get(base + "/")
            screenshot(browser, "fleet")
            browser.get(base + "/apps/staging")
            screenshot(browser, "app")

        browser.get(f"{base}/runs/{check['id']}")
        drift = browser.find_element(By.CSS_SELECTOR, 'section.task[data-host="web1.staging"]')
        assert "-hand-edited: by someone at 3am" in drift.text
        assert browser.find_elements(By.CSS_SELECTOR, 'section.task[data-host="web2.staging"]') == []
        seen.append(browser.page_source)
        if SCREENSHOTS:
            screenshot(browser, "run")

        # a form POST without the CSRF token (or from another site) is refused, and nothing runs
        count = len(fleet.runs())
        assert request(base + "/apps/staging/sync", "POST", b"")[0] == 403
        forged = {"Origin": "http://evil.example", "Cookie": "controller_csrf=x"}
        assert request(base + "/apps/staging/sync", "POST", b"csrf=x", forged)[0] == 403

        browser.get(base + "/apps/staging")
        click(browser, "sync")
        until(browser, 10, lambda d: "Sync started" in d.find_element(By.ID, "main").text)
        browser.execute_script("window.notReloaded = true")
        # the page follows the run by itself: no reload, no click
        until(browser, 120, lambda d: host_state(d, "web1.staging") == "in-sync" and "in progress" not in d.page_source)
        assert browser.execute_script("return window.notReloaded") is True
        assert fleet.host_file("h1", APP_YML).read_text() != "hand-edited: by someone at 3am\n"
        latest = fleet.runs()[0]
        assert latest["app"] == "staging"
        assert (latest["trigger"], latest["mode"], latest["outcome"]) == ("ui", "sync", "converged")
        assert len(fleet.runs()) == count + 1

        # each host's timeline: who did what to it, newest first
        browser.find_element(By.LINK_TEXT, "web1.staging").click()
        until(browser, 10, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.event"))

        def timeline(driver: webdriver.Chrome) -> list[tuple[str | None, str]]:
            return [(row.get_attribute("data-happened"), row.find_elements(By.TAG_NAME, "td")[4].text)
                    for row in driver.find_elements(By.CSS_SELECTOR, "tr.event")]

        assert timeline(browser) == [("drift corrected", "ui"), ("drift found", "manual"),
                                     ("rolled out", first_run(fleet, "staging")["trigger"])], timeline(browser)
        browser.get(base + "/apps/staging/hosts/web2.staging")
        assert [happened for happened, _ in timeline(browser)] == ["in sync", "in sync", "rolled out"]
        seen.append(browser.page_source)

        # this host only: a check of web2 alone, from its page
        click(browser, "check-host")
        until(browser, 10, lambda d: "Check started" in d.find_element(By.ID, "main").text)
        wait_for("the check of web2", lambda: fleet.runs()[0]["mode"] == "check" and fleet.runs()[0]["outcome"])
        one_host = fleet.runs()[0]
        alone = fleet.controller("show", str(one_host["id"]), "--json")
        assert {h["host"] for h in json.loads(alone.stdout)["hosts"]} == {"web2.staging"}, alone.stdout
        seen.append(browser.page_source)

        # a detect app's page says what its buttons do; Apply applies it on purpose, as `sync --apply` would
        browser.get(base + "/apps/production")
        assert browser.find_element(By.ID, "sync").text == "Check now"
        assert browser.find_element(By.ID, "apply").text == "Apply now"
        assert host_state(browser, "web1.prod") == "drifted"
        click(browser, "apply")
        until(browser, 10, lambda d: "Apply started" in d.find_element(By.ID, "main").text)
        until(browser, 120, lambda d: host_state(d, "web1.prod") == "in-sync" and "in progress" not in d.page_source)
        applied = fleet.runs()[0]
        assert (applied["app"], applied["trigger"], applied["policy"], applied["applied"], applied["outcome"]) == (
            "production", "ui", "detect", True, "converged")
        assert "applied on request: policy detect" in request(f"{base}/runs/{applied['id']}")[1].decode()
        seen.append(browser.page_source)

        # the JSON API has the same facts, in the CLI's --json shapes
        status, body = request(base + "/api/apps")
        apps = json.loads(body)["apps"]
        cli = json.loads(fleet.controller("status", "--json").stdout)
        assert status == 200 and [a["app"] for a in apps] == [a["app"] for a in cli] == ["production", "staging"]
        for shown_app, listed in zip(apps, cli, strict=True):
            assert {k: v for k, v in shown_app.items() if k in listed} == listed
        assert apps[1]["host_states"] == {"in-sync": 2}
        assert (apps[0]["policy"], apps[1]["policy"]) == ("detect", "apply")
        status, body = request(f"{base}/api/runs/{check['id']}")
        run = json.loads(body)["run"]
        shown = json.loads(fleet.controller("show", str(check["id"]), "--json").stdout)
        assert {k: v for k, v in run.items() if k != "commit"} == shown
        assert run["commit"]["subject"] == "production: detect only"
        assert request(base + "/api/runs/999999")[0] == 404
        status, body = request(base + "/api/runs?trigger=ui")
        assert [r["id"] for r in json.loads(body)["runs"]] == [applied["id"], one_host["id"], latest["id"]]
        seen.extend(request(base + path)[1].decode() for path in ("/api/apps", "/api/apps/staging", "/history"))
        assert watch.stop() == 0
    no_canary(fleet, *seen)







def test_serve_asks_for_the_token_and_a_busy_lock_is_an_answer(fleet_app: Fleet, browser: webdriver.Chrome) -> None:
    fleet = fleet_app
    fleet.root.joinpath("ui.token").write_text(TOKEN + "\n")
    # named tokens beside it: what alice does is recorded as hers; the viewer's token reads and acts on nothing
    fleet.root.joinpath("alice.token").write_text(ALICE + "\n")
    fleet.root.joinpath("viewer.token").write_text(VIEWER + "\n")
    write_config(fleet, ui={"token_file": "ui.token", "tokens": [
        {"name": "alice", "file": "alice.token"}, {"name": "viewer", "file": "viewer.token", "read_only": True}]})
    assert fleet.controller("check").returncode == 2  # nothing applied yet: every host differs
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with served(fleet.config, port) as serve:
        browser.delete_all_cookies()
        browser.get(base + "/apps/staging")
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "login").click()
        until(browser, 10, lambda d: d.find_elements(By.ID, "failed"))  # a click does not wait for the answer
        assert browser.find_element(By.ID, "failed").text == "Wrong token."
        assert browser.find_elements(By.CSS_SELECTOR, "tr.host") == []
        browser.find_element(By.ID, "token").send_keys(ALICE)
        browser.find_element(By.ID, "login").click()
        until(browser, 10, lambda d: d.current_url == base + "/apps/staging")
        assert host_state(browser, "web1.staging") == "drifted"
        # serve runs no check: no page promises one
        assert browser.find_element(By.ID, "next-check").text.startswith("none here"), browser.page_source
        no_canary(fleet, browser.page_source)

        assert request(base + "/api/apps")[0] == 401
        assert request(base + "/api/apps", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = request(base + "/healthz")  # the same report as watch's, no token needed
        health = json.loads(body)
        assert status == 200 and set(health) == {"status", "uptime_seconds", "cycles", "running",
                                                 "last_success_age_seconds", "last_failure", "role", "leader"}, health
        assert (health["role"], health["leader"]) == (None, None)  # a SQLite store: no other bastion to lead
        assert (health["status"], health["running"]) == ("ok", None)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, body = request(base + "/api/apps", headers=bearer)
        [row] = json.loads(body)["apps"]
        assert status == 200 and row["host_states"] == {"drifted": 2}
        assert (row["scheduled"], row["next_check"]) == (False, None)

        count = len(fleet.runs())
        with open(fleet.state / "controller.lock", "a") as lock:  # a run of someone else's holds the lock
            fcntl.flock(lock, fcntl.LOCK_EX)
            status, body = request(base + "/api/apps/staging/sync", "POST", b"", bearer)
        assert status == 409 and "lock" in json.loads(body)["notice"]
        assert len(fleet.runs()) == count

        status, body = request(base + "/api/apps/staging/suspend", "POST", b"reason=peeking",
                               {"Authorization": f"Bearer {VIEWER}"})
        assert status == 403 and "the token of viewer is read-only" in body.decode(), body
        assert json.loads(fleet.controller("status", "--json").stdout)[0]["suspended"] is False
        status, _ = request(base + "/api/apps/staging/suspend", "POST", b"reason=maintenance", bearer)
        assert status == 202
        assert json.loads(fleet.controller("status", "--json").stdout)[0]["suspended"] is True
        status, body = request(base + "/api/apps/staging/sync", "POST", b"", bearer)
        assert status == 409 and "resume it" in json.loads(body)["notice"] and len(fleet.runs()) == count
        browser.refresh()
        until(browser, 10, lambda d: "maintenance" in d.find_element(By.ID, "main").text)
        click(browser, "resume")
        until(browser, 10, lambda d: "Resumed" in d.find_element(By.ID, "main").text)
        assert json.loads(fleet.controller("status", "--json").stdout)[0]["suspended"] is False

        # Check now, on an app whose policy is apply: a check, recorded as the page's, that changes nothing
        click(browser, "check")
        until(browser, 10, lambda d: "Check started" in d.find_element(By.ID, "main").text)
        wait_for("the check from the page", lambda: len(fleet.runs()) == count + 1 and fleet.runs()[0]["outcome"])
        checked = fleet.runs()[0]
        assert (checked["mode"], checked["trigger"], checked["outcome"]) == ("check", "ui", "drifted"), checked
        assert not fleet.host_file("h1", VERSION).exists()

        # the audit trail: who did what (the token's name and the address), on its page and at the command line
        alice = "alice (dashboard, 127.0.0.1)"
        # the check's entry names its run once the page's thread has it
        wait_for("the check's run in the audit trail", lambda: audit_trail(fleet)[0]["run_id"] is not None)
        assert [(e["act"], e["who"], e["reason"], e["run_id"]) for e in audit_trail(fleet)] == [
            ("check", alice, "", checked["id"]), ("resume", alice, "resumed from the dashboard", None),
            ("suspend", "dashboard (127.0.0.1)", "maintenance", None)]
        browser.get(base + "/audit")
        rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "tr.audit-entry")]
        assert len(rows) == 3 and alice in rows[0] and f"#{checked['id']}" in rows[0], rows
        browser.get(base + f"/runs/{checked['id']}")
        assert browser.find_element(By.CSS_SELECTOR, "dd.by").text.startswith(f"{alice}: check")
        # the read-only token's holder sees the app and no button that acts
        log_in(browser, base, VIEWER)
        assert "read-only" in browser.find_element(By.ID, "read-only").text
        assert browser.find_elements(By.ID, "sync") == [] and browser.find_elements(By.ID, "suspend") == []
        log_in(browser, base, ALICE)  # the app's page as it is now the check has ended

        # stopped while a sync from the page runs: the run is stopped and unwound, and serve exits 0
        click(browser, "sync")
        until(browser, 10, lambda d: "Sync started" in d.find_element(By.ID, "main").text)
        wait_for("the run on the hosts", lambda: [r["outcome"] for r in fleet.runs()
                                                  if (r["trigger"], r["mode"]) == ("ui", "sync")] == [None])
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    assert [r["outcome"] for r in fleet.runs() if r["trigger"] == "ui"] == ["interrupted", "drifted"]
    assert workspaces(serve.pid) == set()


def test_a_running_sync_is_followed_task_by_task(converged_app: Fleet, browser: webdriver.Chrome) -> None:
    fleet = converged_app
    slow = "sleep 12.345"  # the last task of the apply, on web2 alone: the run is caught under way
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + yaml.safe_dump([{
        "name": "Warm the caches", "ansible.builtin.command": slow, "changed_when": False,
        "when": "not ansible_check_mode and inventory_hostname == 'web2.staging'"}]))
    bump_version(fleet, "2.0.0")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    with served(fleet.config, port):
        sync = subprocess.Popen([str(BIN / "controller"), "sync"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            wait_for("the apply's last task on web2", lambda: running(slow), timeout=120)
            browser.get(base + "/apps/staging")
            browser.find_element(By.CSS_SELECTOR, "a.running-run").click()  # "a run is in progress: run #N"
            until(browser, 10, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.live-host"))
            live = {(row.get_attribute("data-phase"), row.get_attribute("data-host")): row.text
                    for row in browser.find_elements(By.CSS_SELECTOR, "tr.live-host")}
            assert set(live) == {(phase, host) for phase in ("check", "apply")
                                 for host in ("web1.staging", "web2.staging")}, live
            assert "Record the deployed version" in browser.find_element(By.ID, "live-run").text
            assert "not yet: running for" in browser.find_element(By.ID, "main").text
            browser.execute_script("window.notReloaded = true")
            shown = browser.page_source
        finally:
            output, _ = sync.communicate(timeout=180)
        assert sync.returncode == 0, output
        # the page follows the run to its end by itself: the outcome, the reports, no live section any more
        until(browser, 20, lambda d: not d.find_elements(By.ID, "live-run") and "converged" in d.find_element(
            By.TAG_NAME, "h1").text)
        assert browser.execute_script("return window.notReloaded") is True
        assert "took" in browser.find_element(By.ID, "main").text
    with Store(fleet.state / "state.db") as store:  # the live rows went with the run's end
        assert store.live(fleet.runs()[0]["id"]) == ()
    no_canary(fleet, shown, browser.page_source)


def test_history_pages_and_filters_over_the_json_api(tmp_path: Path, browser: webdriver.Chrome) -> None:
    fill(tmp_path / "state" / "state.db", runs=120)
    config = tmp_path / "controller.yml"
    config.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git"),
                                                 "commit_url": "https://forge.example/shop/commit/{sha}"},
                                      "state_dir": "state", "workspace_dir": "ws"}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with served(config, port):
        first = json.loads(request(base + "/api/runs")[1])
        assert (first["total"], first["pages"], len(first["runs"])) == (120, 3, 50)
        assert first["runs"][0]["id"] == 120 and first["next"] == "?page=2"
        last = json.loads(request(base + "/api/runs?page=3")[1])
        assert [r["id"] for r in last["runs"]] == list(range(20, 0, -1))
        drifted = json.loads(request(base + "/api/runs?app=app0&outcome=drifted")[1])
        assert drifted["total"] == 9 and {(r["app"], r["outcome"]) for r in drifted["runs"]} == {("app0", "drifted")}
        assert json.loads(request(base + "/api/runs?trigger=ui")[1])["total"] == 24
        status, page = request(base + "/history?app=app0&outcome=drifted&page=1")
        assert status == 200 and page.decode().count('<tr>') == 10  # the heading and nine runs
        assert request(base + "/apps/nothing")[0] == 404

        # the daemon's most frequent runs, its verifies, can be picked out on the page as a person does it; the
        # third is the same as the second and takes its place (retention), saying so
        with Store(tmp_path / "state" / "state.db") as store:
            for message in ("in sync, the first look", "in sync", "in sync"):
                run_id = store.start_run("app1", f"{1:040x}", Kind.VERIFY, Trigger.VERIFY)
                store.finish_run(run_id, Outcome.IN_SYNC, None, message, False, {}, verified=4)
        browser.get(base + "/history")
        Select(browser.find_element(By.NAME, "trigger")).select_by_visible_text("verify")
        browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
        until(browser, 10, lambda d: "trigger=verify" in d.current_url)
        rows = browser.find_elements(By.CSS_SELECTOR, "table tr")[1:]
        assert len(rows) == 2 and all("verify" in row.text for row in rows), [row.text for row in rows]
        assert "2 runs" in browser.find_element(By.CSS_SELECTOR, "p.meta").text
        folded = rows[0].find_element(By.CSS_SELECTOR, ".folded")
        assert folded.text.startswith("2 times since") and "the same run 2 times" in folded.get_attribute("title")
        rows[0].find_element(By.TAG_NAME, "a").click()
        until(browser, 10, lambda d: "/runs/" in d.current_url)
        assert "the same run 2 times" in browser.find_element(By.CSS_SELECTOR, "dd.folded").text
        browser.back()
        until(browser, 10, lambda d: "trigger=verify" in d.current_url)
        Select(browser.find_element(By.NAME, "trigger")).select_by_visible_text("any")
        Select(browser.find_element(By.NAME, "kind")).select_by_visible_text("verify")
        browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
        until(browser, 10, lambda d: "kind=verify" in d.current_url)
        assert "2 runs" in browser.find_element(By.CSS_SELECTOR, "p.meta").text

        # a newest failure is the app's badge, never a green state beside a red failure
        with Store(tmp_path / "state" / "state.db") as store:
            failed = store.start_run("app1", f"{2:040x}", Kind.SYNC, Trigger.MANUAL)
            store.finish_run(failed, Outcome.FAILED, Reason.SYNTAX_CHECK_FAILED, "site.yml: a syntax error", False, {})
        browser.get(base + "/")
        badge = browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="app1"] [data-badge]')
        assert (badge.text, badge.get_attribute("class")) == ("failed", "state state-failed")
        assert "last good: in-sync" in browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="app1"]').text
        assert browser.find_element(By.CSS_SELECTOR, 'tr.app[data-app="app0"] [data-badge]').text != "failed"
        browser.get(base + "/apps/app1")
        assert browser.find_element(By.CSS_SELECTOR, "h1 [data-badge]").text == "failed"
        # the fleet filtered as a person does it: by name, and by what the badge or a host says
        browser.get(base + "/")
        browser.find_element(By.NAME, "q").send_keys("app1")
        browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
        until(browser, 10, lambda d: "q=app1" in d.current_url)
        assert [r.get_attribute("data-app") for r in browser.find_elements(By.CSS_SELECTOR, "tr.app")] == ["app1"]
        assert [a["app"] for a in json.loads(request(base + "/api/apps?state=failed")[1])["apps"]] == ["app1"]
        assert json.loads(request(base + "/api/apps?q=nothing")[1])["apps"] == []
        assert json.loads(request(base + "/api/runs?kind=verify")[1])["total"] == 2
        # every revision links to its commit on the forge (source.commit_url)
        browser.get(base + "/apps/app0")
        links = browser.find_elements(By.CSS_SELECTOR, "a.commit")
        assert links, browser.find_element(By.ID, "main").get_attribute("innerHTML")[:1500]
        sha = links[0].find_element(By.TAG_NAME, "code").get_attribute("title")
        assert links[0].get_attribute("href") == f"https://forge.example/shop/commit/{sha}" and len(sha) == 40

        # a run going on: without JavaScript the pages reload themselves; with it, the stamp tells them to
        before = json.loads(request(base + "/api/stamp")[1])["stamp"]
        assert 'http-equiv="refresh"' not in request(base + "/")[1].decode()
        with Store(tmp_path / "state" / "state.db") as store:
            store.start_run("app0", None, "check", "manual")
        assert json.loads(request(base + "/api/stamp")[1])["stamp"] != before
        assert 'http-equiv="refresh"' in request(base + "/")[1].decode()
        assert json.loads(request(base + "/api/runs?outcome=running")[1])["total"] == 1
        assert request(base + "/", headers={"Host": "rebound.example:80"})[0] == 403  # DNS rebinding

        # /metrics of `serve` reads the same store at each scrape: a run going on is not counted yet, a suspend
        # made elsewhere shows at once
        status, metrics = request(base + "/metrics")
        text = metrics.decode()
        assert status == 200 and promtool(metrics) == ""
        for line in ('controller_runs_total{app="app0",mode="check",outcome="drifted"} 9.0',
                     'controller_runs_total{app="app0",mode="check",outcome="in-sync"} 12.0',
                     'controller_runs_total{app="app0",mode="sync",outcome="converged"} 3.0',
                     'controller_run_duration_seconds_count{app="app0",mode="check"} 21.0',
                     f'controller_applied_revision_info{{app="app0",revision="{1:040x}"}} 1.0',
                     'controller_hosts_behind{app="app0"} 0.0', 'controller_hosts_behind{app="app1"} 0.0',
                     'controller_drifted_hosts{app="app0"} 0.0', 'controller_suspended{app="app0"} 0.0'):
            assert line in text, line
        with Store(tmp_path / "state" / "state.db") as store:
            store.suspend("app0", "tester", "maintenance")
        assert 'controller_suspended{app="app0"} 1.0' in request(base + "/metrics")[1].decode()


@pytest.mark.parametrize("command", ["watch", "serve"])
def test_refuses_to_start_open_to_others_without_a_token(tmp_path: Path, command: str) -> None:
    config = tmp_path / "controller.yml"
    config.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git")}, "state_dir": "state",
                                      "watch": {"listen": f"0.0.0.0:{free_port()}"}}))
    done = subprocess.run([str(BIN / "controller"), "--config", str(config), command], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"controller: the dashboard would answer anyone on {yaml.safe_load(config.read_text())['watch']['listen']}: "
        "set ui.token_file or ui.tokens (or listen on 127.0.0.1, or set ui.enabled: false)"]


RATE = 0.25  # tries a second the throttle test allows: a try comes back after 4 s


def test_wrong_tokens_are_throttled_per_client_with_one_summary_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="controller")
    (tmp_path / "ui.token").write_text(TOKEN + "\n")
    path = tmp_path / "controller.yml"
    path.write_text(yaml.safe_dump({"source": {"url": str(tmp_path / "none.git")}, "state_dir": "state",
                                    "ui": {"token_file": "ui.token"}}))
    config = load_config(path)
    dashboard = Dashboard(config, Access.of(config.ui, HostPort("127.0.0.1", 0)), Actions(config, LogProgress()),
                          schedule=None)
    listener = Listener(HostPort("127.0.0.1", 0), Routes(
        branch="main", secrets={}, max_body=0, on_push=lambda provider, sha: None, health=lambda: (200, {}),
        metrics=lambda: b"", pages=dashboard.handle, summarise=dashboard.summarise))
    # A slower refill than the default, so that a busy machine pausing the test between the flood and the next
    # request (CI: half a second was enough) cannot refill a try the test expects to be refused.
    dashboard.throttle = Throttle(rate=RATE)
    listener.start()
    base = f"http://127.0.0.1:{listener.port}"
    try:
        started = time.monotonic()
        answers = Counter(request(base + "/login", "POST", b"token=guess-0123456789abcdef")[0] for _ in range(300))
        answers.update(request(base + "/api/apps", headers={"Authorization": "Bearer guess"})[0] for _ in range(100))
        seconds = time.monotonic() - started
        assert request(base + "/api/apps", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 429  # not even tried
        time.sleep(1 / RATE + 0.1)
        assert request(base + "/api/apps", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        listener.stop()  # its last window's summary is logged as it stops
    with capsys.disabled():
        print(f"\n400 wrong tokens in {seconds:.2f}s from one client: {dict(answers)}")
    assert set(answers) == {401, 429}
    assert answers[401] <= GUESS_BURST + RATE * seconds + 1  # a few a second at most
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ui: ")]
    assert lines[:FULL_LINES] == ["ui: wrong token (login) from 127.0.0.1"] * FULL_LINES
    assert len(lines) == FULL_LINES + 1, lines
    assert lines[-1].startswith(f"ui: {answers[401]} wrong tokens and {answers[429] + 1} tries refused as too fast")
    assert lines[-1].endswith(f"from 127.0.0.1 ({answers[401] + answers[429] + 1})")
