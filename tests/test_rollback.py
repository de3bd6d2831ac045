"""Rollback and pin on real lab hosts and a real remote: `controller rollback` puts every host back to an earlier
revision at once and pins the app there; syncs heal drift at the pin and leave the branch head alone until the
branch moves or `controller unpin`."""

from __future__ import annotations

import json
from pathlib import Path

from selenium.webdriver.common.by import By

from controller.vocabulary import ExitCode
from lab.repository import git
from tests.conftest import APP_YML, USER, VERSION, Fleet, bump_version
from tests.support.browser import chromium, served
from tests.support.daemon import free_port

HOSTS = ("h1", "h2")


def test_a_rollback_puts_every_host_back_pins_the_app_and_lets_go_when_the_branch_moves(
        converged_app: Fleet, tmp_path: Path) -> None:
    fleet = converged_app
    first = git(fleet.work, "rev-parse", "HEAD")  # A: the example, converged on h1 and h2
    at_first = {h: (fleet.host_file(h, VERSION).read_text(), fleet.host_file(h, APP_YML).read_text()) for h in HOSTS}
    second = bump_version(fleet, "2.1")          # B
    assert fleet.sync()["exit_code"] == 0
    assert [fleet.host_file(h, VERSION).read_text() for h in HOSTS] == ["2.1\n"] * 2

    # refused in one line, nothing run or recorded: a revision off the branch, the head itself
    side = bump_version(fleet, "9.9-side", ref="side")
    git(fleet.work, "reset", "-q", "--hard", second)
    runs = len(fleet.runs())
    off = fleet.controller("rollback", "staging", "--to", side[:10])
    assert off.returncode == ExitCode.ERROR and (f"{side[:12]} does not come before {second[:12]}, the revision "
                                                 "staging runs now: a rollback goes back") in off.stderr, off.stderr
    assert "is the head of main: nothing to roll back to" in fleet.controller("rollback", "staging", "--to",
                                                                              second).stderr
    typo = fleet.controller("rollback", "staging", "--to", "no-such-ref")
    assert typo.returncode == ExitCode.ERROR and "revision 'no-such-ref' not found" in typo.stderr, typo.stderr
    assert len(fleet.runs()) == runs
    assert [fleet.host_file(h, VERSION).read_text() for h in HOSTS] == ["2.1\n"] * 2

    # back to A on every host at once (the default: the newest revision that converged before B), then pinned
    back = fleet.controller("rollback", "staging", "--reason", "2.1 leaks memory", "--json")
    assert back.returncode == 0, back.stdout + back.stderr
    rolled = json.loads(back.stdout)["apps"][0]
    assert (rolled["outcome"], rolled["revision"]) == ("converged", first), rolled
    assert (f"rolled back from {second[:12]} by {USER}: 2.1 leaks memory; pinned at {first[:12]} until the branch "
            f"moves past {second[:12]} or `controller unpin staging`") in rolled["message"]
    assert {h: (fleet.host_file(h, VERSION).read_text(), fleet.host_file(h, APP_YML).read_text())
            for h in HOSTS} == at_first
    run = fleet.runs()[0]
    assert (run["trigger"], run["summary"]["rollback"]) == ("rollback", {
        "from": second, "who": USER, "reason": "2.1 leaks memory"}), run
    assert f"by        {USER}: rollback (2.1 leaks memory)" in fleet.controller("show", str(run["id"])).stdout
    status = fleet.status_of("staging")
    assert status["pin"] is not None and (status["pin"]["revision"], status["pin"]["rolled_back_from"],
                                          status["pin"]["by"], status["pin"]["reason"]) == (
        first, second, USER, "2.1 leaks memory")
    # never forward: that is a sync's, through approvals and windows
    forward = fleet.controller("rollback", "staging", "--to", second[:10])
    assert (f"{second[:12]} does not come before {first[:12]}, the revision staging runs now: a rollback goes "
            "back") in forward.stderr and forward.returncode == ExitCode.ERROR, forward.stderr
    revert = f"git revert --no-edit {first[:12]}..{second[:12]}"
    assert status["pin"]["revert"] == revert
    said = fleet.controller("status").stdout
    assert f"PINNED at {first[:12]} by {USER}" in said and revert in said, said

    # cron's next syncs: the head waits (held, exit 5); a hand edit is healed back to A, not to B
    fleet.host_file("h2", APP_YML).write_text("hand-edited while pinned\n")
    healed = fleet.sync()
    app = healed["apps"][0]
    assert (healed["exit_code"], app["outcome"], app["reason"]) == (ExitCode.HELD, "held", "Pinned"), app
    assert app["revision"] == first and app["applied_to"] == {"web2.staging": "drifted"}, app
    assert f"{second[:12]} waits until the branch moves past it or `controller unpin staging`" in app["message"]
    assert {h: (fleet.host_file(h, VERSION).read_text(), fleet.host_file(h, APP_YML).read_text())
            for h in HOSTS} == at_first
    idle = fleet.controller("sync", "--only-if-changed")
    assert "nothing to do" in idle.stdout + idle.stderr, idle.stdout + idle.stderr

    # the dashboard's page of the app shows the pin and the revert that makes Git match
    port = free_port()
    with served(fleet.config, port), chromium(tmp_path / "chromium") as browser:
        browser.get(f"http://127.0.0.1:{port}/apps/staging")
        pin = browser.find_element(By.ID, "pin").text
        assert f"pinned at {first[:12]} by {USER}" in pin and revert in pin, pin
        browser.get(f"http://127.0.0.1:{port}/audit")
        [entry] = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "tr.audit-entry")]
        assert f"{USER} rollback staging {first[:12]} #{run['id']} 2.1 leaks memory" in entry, entry

    # a fix pushed (C): the branch moved past B, so the pin goes and C is applied
    third = bump_version(fleet, "2.2")
    moved = fleet.controller("sync", "--json", "--progress")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert (f"staging: main moved past {second[:12]}, which staging was rolled back from: no longer pinned at "
            f"{first[:12]}") in moved.stderr
    assert [fleet.host_file(h, VERSION).read_text() for h in HOSTS] == ["2.2\n"] * 2
    assert fleet.status_of("staging")["pin"] is None

    # rolled back again (to A, named), then unpinned: the next sync applies the head at once
    assert fleet.controller("rollback", "staging", "--to", first[:10]).returncode == 0
    assert [fleet.host_file(h, VERSION).read_text() for h in HOSTS] == [at_first["h1"][0]] * 2
    assert fleet.status_of("staging")["pin"]["rolled_back_from"] == third
    unpinned = fleet.controller("unpin", "staging", "--reason", "2.2 is the fix")
    assert unpinned.returncode == 0 and f"no longer pinned at {first[:12]}" in unpinned.stdout, unpinned.stdout
    assert "was not pinned" in fleet.controller("unpin", "staging").stdout
    # suspending and resuming from the command line are in the trail too, with why
    assert fleet.controller("suspend", "staging", "--reason", "disk swap").returncode == 0
    assert fleet.controller("resume", "staging", "--reason", "disk swapped").returncode == 0
    resumed = fleet.sync("--only-if-changed")
    assert (resumed["exit_code"], resumed["apps"][0]["revision"]) == (0, third), resumed
    assert [fleet.host_file(h, VERSION).read_text() for h in HOSTS] == ["2.2\n"] * 2

    # each rollback and unpin in the audit trail: who, why, the revision, the rollback's run
    trail = json.loads(fleet.controller("history", "--audit", "--json").stdout)
    assert [(e["act"], e["who"], e["reason"], e["revision"]) for e in trail] == [
        ("resume", USER, "disk swapped", None), ("suspend", USER, "disk swap", None),
        ("unpin", USER, "2.2 is the fix", first), ("rollback", USER, "", first),
        ("unpin", "controller", f"main moved past {second[:12]} to {third[:12]}", first),
        ("rollback", USER, "2.1 leaks memory", first)], trail
    assert trail[5]["run_id"] == run["id"] and all(e["at"] for e in trail)
    said = fleet.controller("history", "--audit").stdout
    assert said.splitlines()[0].split() == ["WHEN", "WHO", "ACTION", "APP", "REVISION", "RUN", "WHY"], said
