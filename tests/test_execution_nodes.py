"""Execution nodes: a lab host runs the check and apply of one inventory group's hosts through ansible-runner's
streaming, on a repository shaped as public ones are (an INI inventory of datacentre groups with a children
group, ``ansible_user`` and port in ``[all:vars]``, play-level become, SOPS vars in ``group_vars``, a ``pipe``
lookup and a ``changed_when: false`` command).

h1 is dc1's host, reached by the bastion itself; h2 and h3 are dc2's, reached only through h4, the node. The node
reaches them with its own key; its Python is this machine's venv, shared into it read-only. One converge serves
the module; each test puts back what it changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.repository import git, make_age_key, sops_encrypt, write_tree
from tests.conftest import BIN, Fleet, own_prefix, secret, write_config
from tests.support.leaks import files_containing

PLACED = {"web1": "h1", "web2": "h2", "web3": "h3"}
NODE = "h4"
SITE = """\
---
- name: Agents
  hosts: app
  become: true
  tasks:
    - name: Write the agent configuration
      template:
        src: templates/agent.conf.j2
        dest: /srv/agent.conf
        mode: "0600"

    - name: Install the agent's control script
      copy:
        src: bin/agentctl
        dest: /srv/agentctl
        mode: "0755"

    - name: Note which machine ran the play
      copy:
        content: "{{ lookup('pipe', 'hostname') }}\\n"
        dest: /srv/ran-from

    - name: Ask the agent for its version
      command: cat /srv/agent.conf
      changed_when: false

    - name: Wait for the agent to settle
      command: sleep {{ settle }}
      when: settle | default(0) | int > 0
"""
TEMPLATE = "release = {{ release }}\ntoken = {{ agent_token }}\n"


def inventory(lab: Lab) -> str:
    address = {name: lab.host(host).address for name, host in PLACED.items()}
    return (f"[dc1]\nweb1 ansible_host={address['web1']}\n\n"
            f"[dc2]\nweb2 ansible_host={address['web2']}\nweb3 ansible_host={address['web3']}\n\n"
            f"[app:children]\ndc1\ndc2\n\n[all:vars]\nansible_user=deploy\nansible_port={lab.port}\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("nodes")
    with Lab(root / "lab", 4, prefix=own_prefix(190), shared=(Path(sys.prefix),)) as lab:
        node = lab.host(NODE)
        own_key = node.path("/root/.ssh/id_ed25519")  # the node's own key, authorised on the hosts
        own_key.parent.mkdir(mode=0o700, exist_ok=True)
        own_key.write_bytes(lab.private_key.read_bytes())
        own_key.chmod(0o600)
        fleet = Fleet(root / "fleet", lab, make_age_key(root / "age"))
        fleet.root.mkdir()
        fleet.secrets["dc"] = secret("agent-token")
        git(fleet.root, "init", "-q", "--bare", "-b", "main", str(fleet.remote))
        sops = (f"creation_rules:\n  - path_regex: .*\\.sops\\.yml$\n    age: {fleet.key.recipient}\n")
        write_tree(fleet.work, {
            ".sops.yaml": sops, "site.yml": SITE, "inventory/hosts.ini": inventory(lab),
            "inventory/group_vars/app/main.yml": "release: 1.0.0\n", "inventory/group_vars/dc2.yml": "settle: 0\n",
            "templates/agent.conf.j2": TEMPLATE, "bin/agentctl": "#!/bin/sh\nexec cat /srv/agent.conf\n"})
        fleet.write("inventory/group_vars/app/secrets.sops.yml",
                    sops_encrypt(fleet.work / ".sops.yaml", "inventory/group_vars/app/secrets.sops.yml",
                                 f"agent_token: {fleet.secrets['dc']}\n"))
        git(fleet.work, "init", "-q", "-b", "main")
        git(fleet.work, "remote", "add", "origin", str(fleet.remote))
        fleet.push("Agents in two datacentres")
        write_config(fleet, execution_nodes=[serving(fleet, "dc2", ["dc2"])], ssh=strict_ssh(lab))
        synced = fleet.controller("sync")
        assert synced.returncode == 0, synced.stdout + synced.stderr
        yield fleet


def strict_ssh(lab: Lab) -> dict[str, str]:
    """The bastion's ssh settings: every host key known in advance, and checked strictly (on the node too)."""
    return {"private_key_file": str(lab.private_key), "known_hosts_file": str(lab.known_hosts),
            "host_key_checking": "strict"}


def serving(fleet: Fleet, name: str, groups: list[str]) -> dict[str, object]:
    """The lab's node as ``execution_nodes`` names it: reached as root, its Python this machine's venv's."""
    node = fleet.lab.host(NODE)
    return {"name": name, "ssh": f"ssh://root@{node.address}:{node.port}", "python": sys.executable, "groups": groups}


def release(fleet: Fleet) -> str:
    """The release the branch says (tests move it on, never back)."""
    return (fleet.work / "inventory/group_vars/app/main.yml").read_text().split()[1]


def ran_from(fleet: Fleet, name: str) -> str:
    return fleet.host_file(PLACED[name], "/srv/ran-from").read_text().strip()


def node_leftovers(fleet: Fleet) -> list[str]:
    """Job directories on the node's tmpfs, and files of the node's disk (its copy-on-write layer, its /srv)
    holding a secret."""
    node = fleet.lab.host(NODE)
    left = [str(p) for p in node.path("/dev/shm").glob("controller-node-*")]
    needles = [value.encode() for value in fleet.secrets.values()]
    return left + files_containing(needles, searched=(str(node.machine), str(node.root)), keep_out=None)


def test_the_node_checks_and_applies_its_group_s_hosts_and_keeps_nothing(fleet: Fleet) -> None:
    assert ran_from(fleet, "web1") == socket.gethostname()
    assert fleet.host_file("h3", "/srv/agentctl").read_text().startswith("#!/bin/sh")  # the repository's bin/
    assert ran_from(fleet, "web2") == ran_from(fleet, "web3") == NODE
    for name, host in PLACED.items():
        assert fleet.host_file(host, "/srv/agent.conf").read_text() == \
            f"release = {release(fleet)}\ntoken = {fleet.secrets['dc']}\n", name
    checked = fleet.controller("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert node_leftovers(fleet) == []
    # the bastion's caches of mitogen's and Ansible's work are the bastion's: the node's playbook is not told of them
    node = fleet.lab.host(NODE)  # what it wrote: its copy-on-write layer and its tmpfs (its / shows this machine's)
    assert [path for kind in ("mitogen-sources-*", "ansible-parsed-*")
            for path in (*(node.machine / "upper").rglob(kind), *node.path("/tmp").rglob(kind))] == []
    assert list((fleet.state / "cache").glob("ansible-parsed-*"))  # while the bastion's own playbook keeps its own


def test_drift_on_a_node_s_host_is_masked_recorded_and_converged(fleet: Fleet) -> None:
    conf = fleet.host_file("h3", "/srv/agent.conf")
    conf.write_text(conf.read_text().replace(f"release = {release(fleet)}", "release = 0.9-by-hand"))
    checked = fleet.controller("check", "--json")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    [app] = json.loads(checked.stdout)["apps"]
    [task] = [t for t in app["check"]["tasks"] if t["status"] == "changed"]
    assert task["host"] == "web3" and "-release = 0.9-by-hand" in task["diff"]
    assert fleet.secrets["dc"] not in checked.stdout and "token = " in task["diff"]
    shown = fleet.controller("show", str(app["run_id"]))
    assert "0.9-by-hand" in shown.stdout and fleet.secrets["dc"] not in shown.stdout

    synced = fleet.controller("sync", "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert conf.read_text() == f"release = {release(fleet)}\ntoken = {fleet.secrets['dc']}\n"
    assert ran_from(fleet, "web3") == NODE
    stored = files_containing([fleet.secrets["dc"].encode()], searched=(str(fleet.state),))
    assert stored == [] and node_leftovers(fleet) == []


def test_a_stopped_node_makes_only_its_hosts_unreachable(fleet: Fleet) -> None:
    old = release(fleet)
    new = f"{old}.1"
    fleet.lab.stop_host(NODE)
    try:
        fleet.write("inventory/group_vars/app/main.yml", f"release: {new}\n")
        fleet.push(f"Release {new}")
        code, report = fleet.controller_json("sync")
        assert code == 2, report
        [app] = report["apps"]
        assert app["outcome"] == "partial" and app["reason"] == "HostUnreachable"
        down = {t["host"]: t["message"] for t in app["check"]["tasks"] if t["status"] == "unreachable"}
        assert set(down) == {"web2", "web3"}
        assert all(m.startswith("execution node dc2: ") and "Connection refused" in m for m in down.values()), down
        assert fleet.host_file("h1", "/srv/agent.conf").read_text().startswith(f"release = {new}\n")
        assert fleet.host_file("h2", "/srv/agent.conf").read_text().startswith(f"release = {old}\n")
    finally:
        fleet.lab.start_host(NODE)
    synced = fleet.controller("sync")  # the node back: its hosts get the release
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert fleet.host_file("h3", "/srv/agent.conf").read_text().startswith(f"release = {new}\n")


def test_a_host_in_two_nodes_groups_is_refused_in_one_line(fleet: Fleet, tmp_path: Path) -> None:
    write_config(fleet, state_dir=str(tmp_path / "state"), ssh=strict_ssh(fleet.lab),
                 execution_nodes=[serving(fleet, "dc2", ["dc2"]), serving(fleet, "all-apps", ["app"])])
    try:
        checked = fleet.controller("check")
        assert checked.returncode == 1
        assert checked.stderr.count("\n") == 1, checked.stderr
        assert "host web2 is in groups of two execution nodes, dc2 and all-apps" in checked.stderr
    finally:
        write_config(fleet, execution_nodes=[serving(fleet, "dc2", ["dc2"])], ssh=strict_ssh(fleet.lab))


def test_a_stopped_sync_stops_the_playbook_on_the_node_and_wipes_its_job(fleet: Fleet) -> None:
    fleet.write("inventory/group_vars/dc2.yml", "settle: 60\n")
    fleet.push("Let dc2's agents settle")
    node = fleet.lab.host(NODE)
    env = {**os.environ, "CONTROLLER_CONFIG": str(fleet.config)}
    proc = subprocess.Popen([str(BIN / "controller"), "sync"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and fleet.lab.ssh(fleet.lab.host("h2"), "pgrep -x sleep").returncode:
            time.sleep(0.2)  # the apply, run from the node, waits on h2
        assert list(node.path("/dev/shm").glob("controller-node-*")), "the apply never started on the node"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "interrupted" in stdout + stderr, stdout + stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (node_leftovers(fleet) or running_on_node(fleet)):
        time.sleep(0.2)
    assert node_leftovers(fleet) == [] and running_on_node(fleet) == ""
    assert fleet.runs()[0]["outcome"] == "interrupted"
    fleet.write("inventory/group_vars/dc2.yml", "settle: 0\n")
    fleet.push("dc2 settles at once")
    synced = fleet.controller("sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr


def running_on_node(fleet: Fleet) -> str:
    """What of a job still runs on the node: its worker or its playbook (the brackets keep pgrep's own shell out)."""
    found = fleet.lab.ssh(fleet.lab.host(NODE), "pgrep -af '[n]ode_worker|[a]nsible-playbook' || true")
    return found.stdout.strip()


def test_under_accept_new_the_keys_the_node_meets_are_pinned_on_the_bastion(fleet: Fleet, tmp_path: Path) -> None:
    lab = fleet.lab
    dc2 = {f"[{lab.host(h).address}]:{lab.port}" for h in ("h2", "h3")}
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in lab.known_hosts.read_text().splitlines()
                             if line.split()[0] not in dc2))
    before = known.read_text()
    write_config(fleet, state_dir=str(tmp_path / "state"), execution_nodes=[serving(fleet, "dc2", ["dc2"])],
                 ssh={"private_key_file": str(lab.private_key), "known_hosts_file": str(known),
                      "host_key_checking": "accept-new"})
    try:
        checked = fleet.controller("check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        write_config(fleet, execution_nodes=[serving(fleet, "dc2", ["dc2"])], ssh=strict_ssh(lab))
    after = known.read_text()
    assert after.startswith(before)
    added = after[len(before):].splitlines()
    assert len(added) == 2, added  # one line for each of dc2's hosts, nothing else
    for spec in dc2:
        assert subprocess.run(["ssh-keygen", "-F", spec, "-f", str(known)], capture_output=True).returncode == 0
