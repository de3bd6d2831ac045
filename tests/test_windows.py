"""Maintenance windows (gitops.yml ``windows:``) on real lab hosts and a real remote: a deny window holds a sync's
apply (files untouched, exit 5, until when), `check` still reports the drift, `--override-window` applies, drift at
the applied revision is healed inside the window only with ``heal: always``, and `watch` applies when the window
ends, with no new trigger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ControllerError
from controller.run.windows import closed
from controller.schema import Seconds
from controller.source.apps import Window, load_apps
from controller.vocabulary import ExitCode
from tests.conftest import APP_YML, USER, VERSION, Fleet, bump_version
from tests.support.daemon import daemon, runs, version_is, wait_for, watch_config

MONDAY = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
OFFICE = Window(deny="0 9 * * 1-5", duration=Seconds(8 * 3600), timezone="UTC")


@pytest.mark.parametrize(("windows", "now", "said"), [
    ((OFFICE,), MONDAY, 'held by window "0 9 * * 1-5" (UTC) until 17:00 UTC'),
    ((OFFICE,), MONDAY.replace(hour=17), None),                         # the window ends at 17:00
    ((OFFICE,), MONDAY + timedelta(days=5), None),                      # Saturday
    ((OFFICE,), MONDAY.replace(hour=9, minute=0), 'held by window "0 9 * * 1-5" (UTC) until 17:00 UTC'),
    ((OFFICE,), MONDAY.replace(hour=8, minute=59, second=59), None),
    # a window that ends inside another, or where the next begins: held until the last one ends, named by the first
    ((OFFICE, Window(deny="0 16 * * *", duration=Seconds(7200), timezone="UTC")), MONDAY,
     'held by window "0 9 * * 1-5" (UTC) until 18:00 UTC'),
    ((OFFICE, Window(deny="0 17 * * *", duration=Seconds(3600), timezone="UTC")), MONDAY,
     'held by window "0 9 * * 1-5" (UTC) until 18:00 UTC'),
    # a weekend freeze: another day is told with its date
    ((Window(deny="0 17 * * 5", duration=Seconds(3 * 86400), timezone="UTC"),), MONDAY + timedelta(days=4, hours=8),
     'held by window "0 17 * * 5" (UTC) until 2026-12-14 17:00 UTC'),
    # outside every allow window: held until the next one opens (and, if a deny window holds it then, ends)
    ((Window(allow="0 22 * * *", duration=Seconds(7200), timezone="UTC"),), MONDAY,
     'held outside allow window "0 22 * * *" (UTC) until 22:00 UTC'),
    ((Window(allow="0 22 * * *", duration=Seconds(7200), timezone="UTC"),
      Window(deny="0 22 * * *", duration=Seconds(1800), timezone="UTC")), MONDAY,
     'held outside allow window "0 22 * * *" (UTC) until 22:30 UTC'),
    ((Window(allow="0 10 * * *", duration=Seconds(3600), timezone="UTC"),), MONDAY, None),
    # a deny window inside an allow window wins
    ((Window(allow="0 10 * * *", duration=Seconds(3600), timezone="UTC"),
      Window(deny="15 10 * * *", duration=Seconds(1800), timezone="UTC")), MONDAY,
     'held by window "15 10 * * *" (UTC) until 10:45 UTC'),
    # read in the window's own time zone: 09:00 in Paris is 08:00 UTC in winter
    ((Window(deny="0 9 * * *", duration=Seconds(3600), timezone="Europe/Paris"),), MONDAY.replace(hour=8, minute=5),
     'held by window "0 9 * * *" (Europe/Paris) until 10:00 Europe/Paris'),
])
def test_a_window_holds_applies_from_each_start_for_its_duration(windows: tuple[Window, ...], now: datetime,
                                                                   said: str | None) -> None:
    held = closed(windows, now)
    assert (str(held) if held else None) == said


@pytest.mark.parametrize(("window", "problem"), [
    ({"deny": "0 9 * * 1-5", "allow": "0 22 * * *", "duration": "1h"}, "apps[0].windows[0]: needs exactly one of"),
    ({"duration": "1h"}, "apps[0].windows[0]: needs exactly one of deny, allow"),
    ({"deny": "0 25 * * *", "duration": "1h"}, "apps[0].windows[0]: deny: not a cron expression"),
    ({"deny": "0 9 * * *"}, "apps[0].windows[0]: duration: how long the window lasts"),
    ({"deny": "0 9 * * *", "duration": "8 hours"}, "apps[0].windows[0].duration: expected a duration"),
    ({"allow": "0 9 * * *", "duration": "1h", "timezone": "Mars/Olympus"},
     "apps[0].windows[0]: timezone: no time zone 'Mars/Olympus'"),
    ({"deny": "0 9 * * *", "duration": "1h", "mode": "soft"},
     "apps[0].windows[0].mode: unknown key (expected one of: allow, deny, duration, timezone)"),
])
def test_a_window_written_wrong_is_one_line_naming_its_key(tmp_path: Path, window: dict[str, Any],
                                                           problem: str) -> None:
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (tmp_path / "hosts").write_text("web1\n")
    (tmp_path / "gitops.yml").write_text(yaml.safe_dump({"apps": [
        {"name": "web", "playbook": "site.yml", "inventory": "hosts", "windows": [window]}]}))
    with pytest.raises(ControllerError) as raised:
        load_apps(tmp_path)
    assert len(raised.value.message.splitlines()) == 1 and problem in raised.value.message, raised.value.message


def test_a_deny_window_holds_the_apply_until_it_ends_or_is_overridden(converged_app: Fleet) -> None:
    fleet = converged_app
    before = {h: fleet.deployed(h) for h in ("h1", "h2")}
    start = datetime.now(UTC).replace(second=0, microsecond=0)  # a window that opened this minute, for an hour
    cron = f"{start.minute} {start.hour} * * *"
    hour = {"deny": cron, "duration": "1h", "timezone": "UTC"}
    set_windows(fleet, [hour])
    bump_version(fleet, "2.0")

    # the sync checks and holds: nothing applied, exit 5, until when; check reports the drift; cron's fast path waits
    held = fleet.sync()
    app = held["apps"][0]
    assert (held["exit_code"], app["outcome"], app["reason"]) == (ExitCode.HELD, "held", "WindowClosed"), app
    assert f'held by window "{cron}" (UTC) until ' in app["message"]
    assert "not applied to web1.staging, web2.staging (sync --override-window applies now)" in app["message"]
    assert datetime.fromisoformat(app["held_until"]) == start + timedelta(hours=1)
    assert {h: fleet.deployed(h) for h in ("h1", "h2")} == before
    assert "policy detect" not in app["message"]
    idle = fleet.controller("sync", "--only-if-changed")
    assert idle.returncode == 0 and "nothing to do" in idle.stdout + idle.stderr, idle.stdout + idle.stderr
    check = fleet.controller("check")
    assert check.returncode == ExitCode.DRIFT, check.stdout + check.stderr

    # on purpose: applied inside the window (cron's fast path too), and recorded as such
    overridden = fleet.sync("--only-if-changed", "--override-window", "--reason", "CHG-7: hotfix")
    assert overridden["exit_code"] == 0, overridden
    assert f'applied inside window "{cron}" (UTC) (--override-window)' in overridden["apps"][0]["message"]
    assert [fleet.host_file(h, VERSION).read_text() for h in ("h1", "h2")] == ["2.0\n"] * 2
    assert fleet.runs()[0]["summary"]["window"] == {"window": f'"{cron}" (UTC)', "overridden": True}
    [entry] = json.loads(fleet.controller("history", "--audit", "--json").stdout)
    assert (entry["act"], entry["who"], entry["reason"], entry["run_id"]) == (
        "override-window", USER, "CHG-7: hotfix", overridden["apps"][0]["run_id"]), entry

    # drift at the applied revision waits for the window too (heal: when-open, the default)
    fleet.host_file("h2", APP_YML).write_text("hand-edited inside the window\n")
    waits = fleet.sync()
    assert (waits["exit_code"], waits["apps"][0]["outcome"]) == (ExitCode.HELD, "held"), waits
    assert fleet.host_file("h2", APP_YML).read_text() == "hand-edited inside the window\n"

    # heal: always corrects it inside the window (at the revision the hosts run: a new one would wait)
    set_windows(fleet, [hour], heal="always")
    fleet.push("Heal drift inside maintenance windows")
    assert fleet.sync("--override-window")["exit_code"] == 0
    fleet.host_file("h2", APP_YML).write_text("hand-edited inside the window, again\n")
    healed = fleet.sync()
    assert (healed["exit_code"], healed["apps"][0]["applied_to"]) == (0, {"web2.staging": "drifted"}), healed
    assert fleet.host_file("h2", APP_YML).read_text() != "hand-edited inside the window, again\n"

    # watch: a window that ends in a few seconds holds the next commit, which is applied when it ends, by itself
    now = datetime.now(UTC)
    start = now.replace(second=0, microsecond=0)
    ends = int((now - start).total_seconds()) + 40
    set_windows(fleet, [{"deny": f"{start.minute} {start.hour} * * *", "duration": f"{ends}s", "timezone": "UTC"}])
    bump_version(fleet, "3.0")
    assert fleet.sync()["exit_code"] == ExitCode.HELD  # from cron, say, before the daemon starts
    watch_config(fleet, poll_interval=0)  # one cycle at the start (idle: held), then nothing polls
    with daemon(fleet) as watch:
        wait_for("the daemon's first cycle", lambda: "held by a maintenance window" in watch.log(), timeout=60)
        assert fleet.host_file("h1", VERSION).read_text() == "2.0\n"
        wait_for("3.0 when the window ends", lambda: any(
            r["trigger"] == "window" and r["finished"] for r in runs(fleet)), timeout=60)
        assert watch.stop() == 0
    applied = runs(fleet)[0]
    assert (applied["trigger"], applied["outcome"], applied["applied"]) == ("window", "converged", True), applied
    assert version_is(fleet, "3.0")()
    assert datetime.fromisoformat(applied["started"]) >= start + timedelta(seconds=ends)


def set_windows(fleet: Fleet, windows: list[dict[str, str]], **app: str) -> None:
    gitops = yaml.safe_load((fleet.work / "gitops.yml").read_text())
    gitops["apps"][0].update(windows=windows, **app)
    fleet.write("gitops.yml", yaml.safe_dump(gitops))


