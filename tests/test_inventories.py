"""Inventories as people write them: a directory mixing INI, an executable script and a constructed source."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab import Lab
from lab.repository import AgeKey
from tests.conftest import BIN, fleet_on

SCRIPT = """#!/usr/bin/env python3
# An executable inventory: run by Ansible inside the workspace, with the job's environment only.
import json, os, sys
if any(k in os.environ for k in ("SOPS_AGE_KEY", "CONTROLLER_CANARY")):
    sys.exit("the controller's own secrets reached the inventory script")
print(json.dumps({"scripted": {"hosts": ["box1"], "vars": {"role_name": "scripted"}},
                  "_meta": {"hostvars": {"box1": {"ansible_host": "%s", "tier": "front"}}}}))
"""


def test_script_ini_and_constructed_sources_make_one_inventory(tmp_path: Path, lab: Lab, age_key: AgeKey) -> None:
    repo = tmp_path / "repo"
    inventory = repo / "inventory"
    inventory.mkdir(parents=True)
    (repo / "ansible.cfg").write_text("[defaults]\ninventory = inventory\ninterpreter_python = /usr/bin/python3\n"
                                      "gathering = explicit\n[inventory]\n"
                                      "enable_plugins = script, ini, yaml, constructed, auto\n")
    script = inventory / "10-hosts.py"
    script.write_text(SCRIPT % lab.host("h1").address)
    script.chmod(0o755)
    (inventory / "20-static.ini").write_text(f"[static]\nbox2 ansible_host={lab.host('h2').address} tier=front\n"
                                             f"box3 ansible_host={lab.host('h3').address} tier=back\n"
                                             "[all:vars]\nansible_user=root\nansible_port=2222\n")
    (inventory / "40-constructed.yml").write_text("plugin: ansible.builtin.constructed\nstrict: true\n"
                                                  "keyed_groups:\n  - key: tier\n    prefix: tier\n")
    (repo / "site.yml").write_text("- hosts: tier_front\n  gather_facts: false\n  tasks:\n"
                                   "    - ansible.builtin.copy: {content: \"{{ inventory_hostname }}\\n\", "
                                   "dest: /srv/who}\n")
    fleet = fleet_on(repo, tmp_path, lab, age_key, "Mixed inventory")
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config), "SOPS_AGE_KEY": "AGE-SECRET-KEY-1CANARY",
           "CONTROLLER_CANARY": "1"}
    done = subprocess.run([str(BIN / "controller"), "sync"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lab.host("h1").path("/srv/who").read_text() == "box1\n"  # from the script
    assert lab.host("h2").path("/srv/who").read_text() == "box2\n"  # from INI, grouped by constructed
    assert not lab.host("h3").path("/srv/who").exists()             # tier back: not in tier_front
