"""Gathered facts: used in templates, kept in memory for the run only, never reported as a change."""

from __future__ import annotations

from pathlib import Path

from lab import Lab
from lab.repository import AgeKey
from tests.conftest import fleet_on


def test_facts_are_used_cached_in_memory_only_and_never_drift(tmp_path: Path, lab: Lab, age_key: AgeKey) -> None:
    repo = tmp_path / "facts"
    repo.mkdir()
    leak = tmp_path / "fact-cache"
    # the repository asks for a fact cache on disk: the bastion keeps facts in memory instead
    (repo / "ansible.cfg").write_text(f"[defaults]\nfact_caching = jsonfile\nfact_caching_connection = {leak}\n"
                                      "interpreter_python = /usr/bin/python3\n")
    (repo / "site.yml").write_text(
        "- hosts: all\n  gather_facts: true\n  tasks:\n"
        "    - name: Describe the machine\n      ansible.builtin.copy:\n"
        "        content: \"{{ ansible_hostname }} {{ ansible_distribution }} "
        "{{ ansible_distribution_major_version }}\\n\"\n"
        "        dest: /srv/machine\n")
    hosts = "".join(f"{h.name} ansible_host={h.address} ansible_port={lab.port} ansible_user=root\n"
                    for h in lab.hosts[:2])
    (repo / "hosts").write_text(hosts)
    fleet = fleet_on(repo, tmp_path, lab, age_key, "Facts")

    synced = fleet.controller("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "fact_caching" in synced.stderr  # the override is said once
    for host in lab.hosts[:2]:  # each lab host is a machine of its own, with its own hostname
        assert host.path("/srv/machine").read_text() == f"{host.name} Debian 12\n"
    code, report = fleet.controller_json("check")
    assert code == 0, report
    [app] = report["apps"]
    assert app["outcome"] == "in-sync"
    assert not [t for t in app["check"]["tasks"] if t["status"] != "ok"]
    assert not leak.exists()
