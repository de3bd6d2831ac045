"""Approvals (gitops.yml ``approval: required``) on real lab hosts and a real remote: a new revision is checked, then
waits for `controller approve` naming it; drift at an approved revision needs no new approval; a later commit
needs its own; who approved is in the history."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from controller.vocabulary import ExitCode
from tests.conftest import APP_YML, USER, VERSION, Fleet, bump_version, write_config
from tests.support.browser import chromium, mid_navigation
from tests.support.daemon import daemon, free_port, version_is, wait_for, watch_config
from tests.support.receiver import Receiver


def test_a_new_revision_waits_for_an_approval_that_names_it(converged_app: Fleet, tmp_path: Path) -> None:
    fleet = converged_app
    receiver = Receiver()
    write_config(fleet, notify=[{"url": receiver.url}])
    before = {h: fleet.deployed(h) for h in ("h1", "h2")}
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][0]["approval"] = "required"
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    first = bump_version(fleet, "2.0")

    # checked, then held: nothing applied, exit 5, the command that approves it named; announced once
    held = fleet.sync()
    app = held["apps"][0]
    assert (held["exit_code"], app["outcome"], app["reason"]) == (ExitCode.HELD, "held", "ApprovalRequired"), app
    assert (f"{first[:12]} waits for approval: not applied to web1.staging, web2.staging "
            f"(controller approve staging {first[:12]})") in app["message"]
    assert {h: fleet.deployed(h) for h in ("h1", "h2")} == before
    assert receiver.events("staging") == ["approval-required"]
    idle = fleet.controller("sync", "--only-if-changed")
    assert idle.returncode == 0 and "nothing to do" in idle.stdout + idle.stderr, idle.stdout + idle.stderr
    unknown = fleet.controller("approve", "staging", "0123abc")
    assert unknown.returncode == 1 and "'0123abc' is no revision a sync of staging checked yet" in unknown.stderr
    assert "is not a revision" in fleet.controller("approve", "staging", "").stderr

    # approved (the revision waiting, by default): cron's next run applies it, and the history says who
    approved = fleet.controller("approve", "staging", "--reason", "change 42 reviewed")
    assert approved.returncode == 0, approved.stderr
    assert f"staging: {first[:12]} approved by {USER} at " in approved.stdout
    applied = fleet.sync("--only-if-changed")
    assert (applied["exit_code"], applied["apps"][0]["outcome"]) == (0, "converged"), applied
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")] == ["2.0\n"] * 2
    history = json.loads(fleet.controller("history", "--json").stdout)
    approval = history[0]["summary"]["approval"]
    assert (approval["who"], approval["reason"]) == (USER, "change 42 reviewed"), history[0]
    again = fleet.controller("approve", "staging")
    assert again.returncode == 1 and "no revision of staging waits for approval" in again.stderr, again.stderr

    # drift at the approved revision is healed without a new approval
    fleet.host_file("h2", APP_YML).write_text("hand-edited\n")
    healed = fleet.sync()
    assert (healed["exit_code"], healed["apps"][0]["applied_to"]) == (0, {"web2.staging": "drifted"}), healed

    # an approval names one revision: the next commit waits for its own
    second = bump_version(fleet, "2.1")
    waits = fleet.sync()
    assert (waits["exit_code"], waits["apps"][0]["reason"]) == (ExitCode.HELD, "ApprovalRequired"), waits
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")] == ["2.0\n"] * 2
    assert fleet.controller("approve", "staging", first[:9]).returncode == 0  # the first's again: no use
    assert fleet.sync()["exit_code"] == ExitCode.HELD

    # approved from the dashboard of a running watch, in a real browser: the app's page says what waits, its
    # button approves it, and the daemon applies it at once (it polls never, verifies never)
    port = free_port()
    watch_config(fleet, listen=f"127.0.0.1:{port}", verify_interval=0, notify=[{"url": receiver.url}])
    with daemon(fleet, port) as watch, chromium(tmp_path / "chromium") as browser:
        wait_for("the first cycle", watch.settled)
        assert fleet.runs()[0]["trigger"] != "ui"
        browser.get(f"http://127.0.0.1:{port}/apps/staging")
        assert f"waiting for approval {second[:12]} was checked" in browser.find_element(By.ID, "approval").text
        browser.find_element(By.ID, "approve").click()

        def approved_page() -> bool:  # the redirect back to the app's page, read once it has loaded
            try:
                body = browser.find_element(By.TAG_NAME, "body").text
                return "Approved: the next sync applies this revision." in body and not browser.find_elements(
                    By.ID, "approval")
            except WebDriverException as error:
                if not mid_navigation(error):
                    raise
                return False
        wait_for("the app's page saying it is approved", approved_page, timeout=30)
        wait_for("the approved revision applied", version_is(fleet, "2.1"), timeout=60)
        wait_for("the run recorded", watch.settled)
        assert watch.stop() == 0
    applied = fleet.runs()[0]
    assert (applied["trigger"], applied["outcome"], applied["summary"]["approval"]["who"]) == (
        "ui", "converged", "dashboard (127.0.0.1)"), applied
    trail = json.loads(fleet.controller("history", "--audit", "--app", "staging", "--json").stdout)
    assert [(e["act"], e["who"], e["revision"]) for e in trail] == [
        ("approve", "dashboard (127.0.0.1)", second), ("approve", USER, first)], trail

    # a commit that drops the requirement is itself a new revision that needs an approval; the next does not
    gitops["apps"][0].pop("approval")
    fleet.write("gitops.yml", yaml.safe_dump(gitops))
    dropped = fleet.push("No more approvals for staging")
    assert fleet.sync()["apps"][0]["reason"] == "ApprovalRequired"
    assert fleet.controller("approve", "staging", dropped).returncode == 0
    assert fleet.sync()["exit_code"] == 0
    bump_version(fleet, "2.2")
    assert fleet.sync()["exit_code"] == 0
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")] == ["2.2\n"] * 2
    assert receiver.events("staging").count("approval-required") == 3  # 2.0, 2.1 and the commit that drops it
    receiver.server.shutdown()
