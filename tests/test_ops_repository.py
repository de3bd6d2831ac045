"""The example repository as ops use it: whole machines, deploy + sudo, a package, a user, /etc, cron, a unit."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab import Lab
from lab.repository import make_age_key, publish_sources
from tests.conftest import ROOT, Fleet, build_fleet, own_prefix

APPS = ("staging-system", "production-system")
PLACEMENT = {"staging": {"web1.staging": "h1", "web2.staging": "h2"},
             "production": {"web1.prod": "h3", "web2.prod": "h4", "web3.prod": "h5"}}
NAMES = {host: name for hosts in PLACEMENT.values() for name, host in hosts.items()}
ENVS = {host: env for env, hosts in PLACEMENT.items() for host in hosts.values()}
REPORTER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnJlcG9ydGVya2V5Zm9ydGVzdHNvbmx5MDAwMDAw reporter@ops"
# what the lab hosts manage; this machine's own copies must not change
MACHINE = ("/etc/passwd", "/etc/group", "/etc/shadow", "/var/lib/dpkg/status", "/etc/motd")


def digest(paths: tuple[str, ...]) -> dict[str, str | None]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).exists() else None for p in paths}


@pytest.fixture(scope="module")
def machine() -> dict[str, str | None]:
    """This machine's own accounts, package list and banner, before any lab host was touched."""
    return digest(MACHINE)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, machine: dict[str, str | None]) -> Iterator[Fleet]:
    """One lab of five whole machines for the module, converged by the example's system apps."""
    root = tmp_path_factory.mktemp("ops")
    with Lab(root / "lab", 5, prefix=own_prefix(150)) as lab:
        fleet = build_fleet(root / "fleet", lab, make_age_key(root / "age"), apps=APPS, placement=PLACEMENT)
        sources = publish_sources(root / "sources")
        fleet.write("requirements.yml",
                    (ROOT / "requirements.yml").read_text().replace("/var/lib/ops-sources", str(sources)))
        for env in PLACEMENT:
            fleet.write(f"inventories/{env}/group_vars/all/system.yml",
                        f"system_sources: {sources}\nsystem_user_keys: [{REPORTER_KEY!r}]\n")
        fleet.push("The machine layer, with its sources on this bastion")
        synced = fleet.controller("sync")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        yield fleet
    assert digest(MACHINE) == machine


def root_ssh(fleet: Fleet, host: str, command: str) -> str:
    done = fleet.lab.ssh(fleet.lab.host(host), command)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_converged(fleet: Fleet, host: str) -> None:
    """What the system apps promise, read on the host itself."""
    name = NAMES[host]
    status = root_ssh(fleet, host, "dpkg-query -W -f '${Status} ${Version}' shop-tools")
    assert status == "install ok installed 1.0.0"
    assert root_ssh(fleet, host, "id -u shop && id -g shop").split() == ["990", "990"]
    on = fleet.lab.host(host).path
    assert on("/var/lib/shop/.ssh/authorized_keys").read_text() == REPORTER_KEY + "\n"
    assert on("/var/lib/shop/.ssh/authorized_keys").stat().st_uid == 990
    conf = on("/etc/shop/shop.conf").read_text()
    assert f"host = {host}\n" in conf and "os = Debian 12\n" in conf  # facts of the host itself
    assert f"environment = {ENVS[host]}\n" in conf
    assert "*/15 * * * * shop /usr/bin/shop-tools report" in on("/etc/cron.d/shop-tools").read_text()
    assert "ExecStart=/usr/bin/shop-tools report" in on("/etc/systemd/system/shop-tools-report.service").read_text()
    assert on("/etc/motd").read_text().startswith(f"{name} ({host}): Debian 12")  # the role from another repo
    assert "shop on " + host in root_ssh(fleet, host, "su shop -c '/usr/bin/shop-tools report'")


def test_the_example_converges_whole_machines_as_deploy_with_sudo(ops: Fleet, machine: dict[str, str | None]) -> None:
    for host in NAMES:
        assert_converged(ops, host)
    assert digest(MACHINE) == machine  # none of it happened to this machine
    assert root_ssh(ops, "h1", "cat /proc/1/comm").strip() == "sshd"  # a lab host, not this machine
    # the role's remote and the collection gone: a second sync needs none of them, it has them cached
    cache = ops.state / "cache/requirements"
    [installed] = list(cache.iterdir())
    assert (installed / "roles/motd/tasks/main.yml").is_file()
    assert (installed / "collections/ansible_collections/ops/toolkit/plugins/filter/kv.py").is_file()
    sources = ops.root.parent / "sources"
    shutil.rmtree(sources / "role-motd.git")
    (sources / "ops-toolkit-1.0.0.tar.gz").unlink()
    done = ops.controller("sync", "--json", "--progress")
    assert done.returncode == 0, done.stderr
    assert "==> 2 requirement(s): cached" in done.stderr
    again = json.loads(done.stdout)
    assert [app["outcome"] for app in again["apps"]] == ["in-sync", "in-sync"], again
    tasks = [task for app in again["apps"] for task in app["check"]["tasks"]]
    assert tasks and [t for t in tasks if t["status"] not in ("ok", "skipped")] == []  # check mode agrees
    assert [app["apply"] for app in again["apps"]] == [None, None]  # and nothing was applied
    # the role's command ran at this revision on every host: nothing open, and said so
    for app, hosts in zip(again["apps"], (2, 3), strict=True):
        assert f"{hosts} host(s) in sync; {hosts} task(s) check mode cannot verify, last run at " in app["message"]
    status = ops.controller("status").stdout
    assert status.count("task(s) check mode cannot verify, last run at") == 2, status


def test_a_hand_change_of_each_kind_is_reported_and_put_back(ops: Fleet) -> None:
    changes = {
        "h1": ("dpkg -r shop-tools", "Install the package"),
        "h2": ("userdel shop", "The system user"),
        "h3": ("sed -i 's/^workers = .*/workers = 99/' /etc/shop/shop.conf",
               "Configure the shop tools from the host's facts"),
        "h4": ("sed -i 's|^\\*/15 |0 |' /etc/cron.d/shop-tools", "Run the report from cron"),
    }
    for host, (command, _) in changes.items():
        root_ssh(ops, host, command)
    # one look per host sees each of them: a package, a user, a file in /etc, a cron file; each host that
    # differs gets a full check, which reports Ansible's own drift and diff and changes nothing
    code, looked = ops.controller_json("verify")
    assert code == 2, looked
    why = {v["host"]: v["why"] for app in looked["apps"] for v in app["verify"]}
    assert "package shop-tools: was there, now absent" in why[NAMES["h1"]], why
    assert "user shop: was there, now absent" in why[NAMES["h2"]], why
    assert why[NAMES["h3"]] == "/etc/shop/shop.conf: content changed", why
    assert why[NAMES["h4"]] == "/etc/cron.d/shop-tools: content changed", why
    assert why[NAMES["h5"]] == "", why
    tasks = [task for app in looked["apps"] for task in app["check"]["tasks"]]
    drifted = {(t["host"], t["task"].removeprefix("system : ")) for t in tasks if t["status"] == "changed"}
    for host, (_, task) in changes.items():
        assert (NAMES[host], task) in drifted, drifted
    assert {h for h, _ in drifted} == {NAMES[host] for host in changes}  # h5 is untouched, in sync
    diffs = {t["task"].removeprefix("system : "): t["diff"] for t in tasks if t["status"] == "changed"}
    assert "-workers = 99" in diffs["Configure the shop tools from the host's facts"]
    assert "-0 * * * * shop" in diffs["Run the report from cron"]
    assert "\n0 * * * * shop" in ops.lab.host("h4").path("/etc/cron.d/shop-tools").read_text()  # check changed nothing

    synced = ops.controller("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    for host in NAMES:
        assert_converged(ops, host)
    after = ops.controller("check", "-o", "yaml", "-v")  # the report as YAML: the same document as --json
    assert after.returncode == 0, after.stdout + after.stderr
    assert [app["outcome"] for app in yaml.safe_load(after.stdout)["apps"]] == ["in-sync", "in-sync"]
    # -v: every task result on every host as it comes, the ok ones too
    for host in NAMES.values():
        assert f"] {host}: ok  system : Configure the shop tools from the host's facts" in after.stderr, after.stderr
