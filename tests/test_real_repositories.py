"""A repository shaped as public ones are, not as our example: no gitops.yml, an INI inventory that names the
key, user and port, a host behind a jump host, play-level become, vendored collection tarballs listed
dependents first, a role that ships a package with its SysV service, a user with a shell, a cron file, a
``changed_when: false`` command and a command check mode cannot verify.

The content is our own, written in the shape of geerlingguy's nginx role and dev-sec's os_hardening.
One converge serves the module; each test puts back what it changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.ansible.results import Connection
from controller.ansible.targets import targets_of
from controller.config import load_config
from controller.verify.manifest import Resource
from controller.verify.probe import look
from lab import Lab, counting_ssh
from lab.repository import debian_package, git, make_age_key, write_tree
from tests.conftest import Fleet, own_prefix, write_config
from tests.support.collections import dependent_collections

JUMP = "h1"
PLACED = {"web1": "h2", "web2": "h3", "inner1": "h4"}   # inner1 is only reached through the jump host
AGENT_CONF = "/etc/acme/agent.conf"

AGENT = """\
#!/bin/sh
# the acme agent: a daemon, and the few subcommands its role runs
case "$1" in
  --check-config) exec test -r /etc/acme/agent.conf ;;
  --register) date > /var/lib/acme/registered ;;
  --report) echo "agent on $(hostname)" ;;
  *) while :; do sleep 3600; done ;;
esac
"""
INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          acme-agent
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: the acme agent
### END INIT INFO
PIDFILE=/run/acme-agent.pid
case "$1" in
  start) start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE \\
           --startas /usr/sbin/acme-agent ;;
  stop) start-stop-daemon --stop --quiet --oknodo --pidfile $PIDFILE --remove-pidfile ;;
  restart) "$0" stop; "$0" start ;;
  status) start-stop-daemon --status --pidfile $PIDFILE ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 3 ;;
esac
"""
ROLE_TASKS = """\
---
- name: Ship the agent package
  copy:
    src: acme-agent_1.0.0_all.deb
    dest: /var/cache/acme-agent_1.0.0_all.deb
    mode: 0644

- name: Install the agent
  apt:
    deb: /var/cache/acme-agent_1.0.0_all.deb

- name: Ensure sudo is installed.
  package: name=sudo state=present

- name: Agent group
  group:
    name: acme
    system: yes

- name: Agent user
  user:
    name: acme
    group: acme
    shell: /bin/bash
    home: /var/lib/acme
    system: yes

- name: Configuration directory
  file: path=/etc/acme state=directory mode=0755

- name: Configure the agent
  template:
    src: agent.conf.j2
    dest: /etc/acme/agent.conf
    mode: 0644
  notify: restart agent

- name: Check the agent's configuration
  command: /usr/sbin/acme-agent --check-config
  changed_when: false

- name: Register the agent
  command: /usr/sbin/acme-agent --register

- name: Report from cron
  copy:
    content: "*/5 * * * * acme /usr/sbin/acme-agent --report\n"
    dest: /etc/cron.d/acme-agent
    mode: 0644

- name: Ensure the agent is running as configured.
  service:
    name: acme-agent
    state: started
    enabled: yes
"""
SITE = """\
---
- hosts: all
  become: yes
  roles:
    - acme_agent
"""
ANSIBLE_CFG = """\
[defaults]
inventory = inventory/hosts.ini
roles_path = roles
host_key_checking = False
interpreter_python = auto_silent
retry_files_enabled = False

[ssh_connection]
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
pipelining = True
"""


@dataclass
class Shaped:
    """The module's converged fleet, the check that ran before its first sync, and the keys it uses."""

    fleet: Fleet
    first_check: subprocess.CompletedProcess[str]
    deploy_key: Path                  # what the inventory names
    env: dict[str, str]               # SSH_AUTH_SOCK: the agent that holds the jump host's key

    def controller(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.fleet.controller(*args, env={**self.env, **(env or {})})

    def json(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        done = self.controller(*args, "--json", env=env)
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout)

    def root(self, name: str, command: str) -> str:
        done = self.fleet.lab.ssh(self.fleet.lab.host(PLACED[name]), command)
        assert done.returncode == 0, done.stderr
        return done.stdout


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shaped]:
    root = tmp_path_factory.mktemp("shaped")
    with Lab(root / "lab", 1 + len(PLACED), prefix=own_prefix(170)) as lab:
        lab_key = lab.private_key
        deploy_key = shutil.copy(lab_key, root / "deploy_key")  # a key the bastion keeps for this repository
        bastion_key = keygen(root / "bastion_key")              # authorised nowhere: the inventory's key must win
        jump_key = keygen(root / "jump_key")                    # authorised on the jump host only
        authorized = lab.host(JUMP).path("/home/deploy/.ssh/authorized_keys")
        authorized.write_text(authorized.read_text() + Path(f"{jump_key}.pub").read_text())
        for host in PLACED.values():  # servers without package lists: apt reads only what is installed, fast
            done = lab.ssh(lab.host(host), "rm -f /var/lib/apt/lists/*_Packages* /var/cache/apt/*.bin")
            assert done.returncode == 0, done.stderr
        agent = subprocess.run(["ssh-agent", "-s", "-a", str(root / "agent.sock")], check=True, capture_output=True,
                               text=True).stdout
        agent_pid = int(agent.split("SSH_AGENT_PID=")[1].split(";")[0])
        env = {"SSH_AUTH_SOCK": str(root / "agent.sock")}
        subprocess.run(["ssh-add", "-q", str(jump_key)], env={**os.environ, **env}, check=True)
        try:
            fleet = Fleet(root / "fleet", lab, make_age_key(root / "age"))
            fleet.root.mkdir()
            git(fleet.root, "init", "-q", "--bare", "-b", "main", str(fleet.remote))
            package = write_tree(root / "acme-agent", {
                "DEBIAN/control": "Package: acme-agent\nVersion: 1.0.0\nArchitecture: all\nMaintainer: lab\n"
                                  "Description: the acme agent\n",
                "usr/sbin/acme-agent": AGENT, "etc/init.d/acme-agent": INIT_SCRIPT})
            for script in ("usr/sbin/acme-agent", "etc/init.d/acme-agent"):
                (package / script).chmod(0o755)
            deb = debian_package(package, root / "debs")
            tarballs = dependent_collections(root / "collections")
            address = {name: lab.host(h).address for name, h in PLACED.items()}
            write_tree(fleet.work, {
                "ansible.cfg": ANSIBLE_CFG, "site.yml": SITE,
                "inventory/hosts.ini": (
                    f"[web]\nweb1 ansible_host={address['web1']}\nweb2 ansible_host={address['web2']}\n\n"
                    f"[internal]\ninner1 ansible_host={address['inner1']}\n\n"
                    f"[all:vars]\nansible_user=deploy\nansible_port={lab.port}\n"
                    f"ansible_ssh_private_key_file={deploy_key}\n"),
                "inventory/group_vars/internal.yml":
                    f"ansible_ssh_common_args: '-o ProxyJump=deploy@{lab.host(JUMP).address}:{lab.port}'\n",
                # dependents first: ansible-galaxy resolves them among the listed tarballs
                "requirements.yml": yaml.safe_dump({"collections": [
                    {"name": f"vendor/{tarballs['app'].name}", "type": "file"},
                    {"name": f"vendor/{tarballs['base'].name}", "type": "file"}]}),
                "roles/acme_agent/tasks/main.yml": ROLE_TASKS,
                "roles/acme_agent/handlers/main.yml":
                    "- name: restart agent\n  service: name=acme-agent state=restarted\n",
                "roles/acme_agent/templates/agent.conf.j2":
                    "{{ 'acme agent' | acme.app.banner }}\nhost = {{ inventory_hostname | acme.base.shout }}\n"})
            (fleet.work / "vendor").mkdir()
            for tarball in tarballs.values():
                shutil.copy(tarball, fleet.work / "vendor")
            (fleet.work / "roles/acme_agent/files").mkdir()
            shutil.copy(deb, fleet.work / "roles/acme_agent/files")
            git(fleet.work, "init", "-q", "-b", "main")
            git(fleet.work, "remote", "add", "origin", str(fleet.remote))
            fleet.push("Agents everywhere")
            known_hosts = shutil.copy(lab.known_hosts, root / "known_hosts")
            write_config(fleet, ssh={"private_key_file": str(bastion_key), "known_hosts_file": str(known_hosts),
                                     "host_key_checking": "strict"})
            shaped = Shaped(fleet, fleet.controller("check", env=env), Path(deploy_key), env)
            synced = shaped.controller("sync")
            assert synced.returncode == 0, synced.stdout + synced.stderr
            yield shaped
        finally:
            os.kill(agent_pid, signal.SIGTERM)


def test_a_fresh_host_s_check_mode_failures_may_depend_on_what_the_apply_changes_first(shaped: Shaped) -> None:
    first = shaped.first_check
    assert first.returncode == 2, first.stdout + first.stderr  # drift, not a failure of the run
    lines = first.stdout.splitlines()
    assert "drifted" in lines[1] and "failed" not in lines[1], lines[1]
    failed = [line for line in lines if "  failed  " in line]
    assert len(failed) == len(PLACED), first.stdout
    assert all("acme_agent : Install the agent (apt): may depend on a change not yet applied: " in line
               for line in failed), failed
    runs = shaped.fleet.runs()
    check = next(r for r in runs if r["mode"] == "check")
    stored = shaped.fleet.controller("show", str(check["id"]))
    assert "failed  acme_agent : Install the agent (apt): may depend on a change not yet applied" in stored.stdout
    # and the sync after it converged every host, through the jump host too
    for name in PLACED:
        assert shaped.root(name, "/etc/init.d/acme-agent status && getent passwd acme").endswith(":/bin/bash\n")


def test_verify_reaches_every_host_as_the_inventory_says_and_finds_a_hand_edit(shaped: Shaped,
                                                                               tmp_path: Path) -> None:
    counting, calls = counting_ssh(tmp_path)
    code, result = shaped.json("verify", env=counting)
    assert code == 0, result
    [app] = result["apps"]
    found = {v["host"]: v for v in app["verify"]}
    assert all(v["verified"] for v in found.values()), found
    # the package, sudo, the user, the group, the service: read in the same look as the paths
    assert all(v["resources"] == 5 and v["paths"] >= 4 for v in found.values()), found
    assert all(v["uncovered_tasks"] == ["acme_agent : Check the agent's configuration",
                                        "acme_agent : Register the agent"] for v in found.values()), found
    assert sorted(calls.read_text().splitlines()) == sorted(shaped.fleet.lab.host(h).address
                                                            for h in PLACED.values())

    # a hand edit behind the jump host: found by its look, checked and corrected there alone
    conf = shaped.fleet.lab.host(PLACED["inner1"]).path(AGENT_CONF)
    conf.write_text(conf.read_text() + "debug = true\n")
    code, result = shaped.json("sync", "--verify-first")
    assert code == 0, result
    [app] = result["apps"]
    found = {v["host"]: v for v in app["verify"]}
    assert found["inner1"]["why"] == f"{AGENT_CONF}: content changed" and found["web1"]["verified"], found
    assert {t["host"] for t in app["check"]["tasks"] if t["status"] == "changed"} == {"inner1"}
    assert app["applied_to"] == {"inner1": "drifted"}
    assert "debug" not in conf.read_text()


def test_verify_sees_a_removed_package_a_stopped_service_and_a_changed_shell(shaped: Shaped, tmp_path: Path) -> None:
    shaped.root("web1", "dpkg -r acme-agent >/dev/null")
    shaped.root("web2", "service acme-agent stop")
    shaped.root("inner1", "usermod -s /bin/sh acme")
    counting, calls = counting_ssh(tmp_path)
    code, result = shaped.json("verify", env=counting)
    assert code == 2, result
    [app] = result["apps"]
    why = {v["host"]: v["why"] for v in app["verify"]}
    assert "package acme-agent: was there, now absent" in why["web1"], why
    assert why["web2"] == "service acme-agent: running yes -> no", why
    assert why["inner1"] == "user acme: shell /bin/bash -> /bin/sh", why
    assert len(calls.read_text().splitlines()) == len(PLACED)  # one look each, then Ansible's full check
    drifted = {(t["host"], t["task"].removeprefix("acme_agent : ")) for t in app["check"]["tasks"]
               if t["status"] == "changed"}
    assert {("web1", "Install the agent"), ("web2", "Ensure the agent is running as configured."),
            ("inner1", "Agent user")} <= drifted, drifted

    assert shaped.controller("sync").returncode == 0
    assert shaped.root("inner1", "getent passwd acme").strip().endswith(":/bin/bash")
    assert shaped.json("verify")[0] == 0


def test_a_wrong_key_is_a_failed_look_never_drift(shaped: Shaped) -> None:
    right = shaped.deploy_key.read_bytes()
    shaped.deploy_key.write_bytes(keygen(shaped.fleet.root / "other_key").read_bytes())
    try:
        code, result = shaped.json("verify")
    finally:
        shaped.deploy_key.write_bytes(right)
    assert code == 2, result
    [app] = result["apps"]
    for verdict in app["verify"]:
        assert verdict["why"].startswith(f"could not look at {verdict['host']}: "), verdict
        assert "Permission denied (publickey" in verdict["why"], verdict
    assert {h["status"] for h in app["check"]["hosts"]} == {"unreachable"}  # Ansible could not either
    assert app["outcome"] == "partial" and "drifted" not in app["message"], app
    # the next look says what the full check found, and the host is back once the key is
    code, result = shaped.json("verify")
    assert code == 0, result
    assert {v["why"] for v in result["apps"][0]["verify"]} == {"unreachable at the last full check"}


def test_a_jump_host_s_key_is_checked_against_the_bastion_s_known_hosts(shaped: Shaped, tmp_path: Path) -> None:
    lab = shaped.fleet.lab
    jump = lab.host(JUMP)
    inner = Connection(lab.host(PLACED["inner1"]).address, lab.port, "deploy", str(shaped.deploy_key),
                       common_args=("-o", f"ProxyJump=deploy@{jump.address}:{lab.port}"), become=True)
    without_jump = tmp_path / "known_hosts"
    without_jump.write_text("".join(line for line in lab.known_hosts.read_text().splitlines(keepends=True)
                                    if not line.startswith(f"[{jump.address}]")))
    config = shaped.fleet.config.read_text()
    agent = os.environ.get("SSH_AUTH_SOCK")
    os.environ["SSH_AUTH_SOCK"] = shaped.env["SSH_AUTH_SOCK"]
    try:
        for known, expected in ((lab.known_hosts, ""), (without_jump, "host key mismatch")):
            write_config(shaped.fleet, state_dir=str(tmp_path / "state"),
                         ssh={"known_hosts_file": str(known), "host_key_checking": "strict"})
            looked = look(load_config(shaped.fleet.config), {"inner1": (inner, ("/etc/hostname", "user:deploy"))})
            assert (expected in looked["inner1"].error) if expected else not looked["inner1"].error, looked
        assert looked["inner1"].error == "could not look at inner1: host key mismatch: its key is not the one in " \
                                         "known_hosts; nothing was sent"
    finally:
        os.environ.pop("SSH_AUTH_SOCK")
        if agent is not None:
            os.environ["SSH_AUTH_SOCK"] = agent
        shaped.fleet.config.write_text(config)


def test_the_look_reads_mounts_sysctl_values_and_crontabs(shaped: Shaped) -> None:
    lab = shaped.fleet.lab
    host = lab.host(PLACED["web2"])
    shaped.root("web2", "mkdir -p /mnt/scratch && mount -t tmpfs -o size=1m tmpfs /mnt/scratch && "
                        "echo 'tmpfs /mnt/scratch tmpfs size=1m 0 0' >> /etc/fstab && "
                        "mkdir -p /var/spool/cron/crontabs && echo '0 * * * * true' > /var/spool/cron/crontabs/acme")
    connection = Connection(host.address, lab.port, "root", str(lab.private_key))
    targets = ("mount:/mnt/scratch", "mount:/mnt/nothing", "sysctl:kernel.ostype", "sysctl:kernel.nothing",
               "crontab:acme", "crontab:", "group:acme", "user:nobody-here")

    def read() -> dict[str, dict[str, str]]:
        [looked] = look(load_config(shaped.fleet.config), {"web2": (connection, targets)}).values()
        assert not looked.error, looked.error
        return {r.key: dict(r.state) for r in looked.resources}

    found = read()
    assert found["mount:/mnt/scratch"]["mounted"].startswith("tmpfs tmpfs rw,"), found
    assert found["mount:/mnt/scratch"]["fstab"] == "tmpfs tmpfs size=1m 0 0"
    assert found["mount:/mnt/nothing"] == {} and found["sysctl:kernel.nothing"] == {}
    assert found["sysctl:kernel.ostype"] == {"value": "Linux"}
    assert len(found["crontab:acme"]["sha1"]) == 40 and found["crontab:"] == {}  # root has none
    assert found["group:acme"]["gid"].isdigit() and found["user:nobody-here"] == {}
    shaped.root("web2", "umount /mnt/scratch && sed -i '/scratch/d' /etc/fstab && "
                        "rm /var/spool/cron/crontabs/acme")
    before = Resource("mount", "/mnt/scratch", tuple(found["mount:/mnt/scratch"].items()))
    after = read()
    assert before.differences(Resource("mount", "/mnt/scratch", tuple(after["mount:/mnt/scratch"].items()))) == [
        "mount /mnt/scratch: was there, now absent"]
    assert after["crontab:acme"] == {}


def test_tasks_check_mode_cannot_verify_are_open_only_where_the_revision_is_new(shaped: Shaped) -> None:
    fleet = shaped.fleet
    revision = git(fleet.work, "rev-parse", "HEAD")
    code, result = shaped.json("sync")
    [app] = result["apps"]
    assert code == 0 and app["outcome"] == "in-sync", result
    # nothing open: "Register the agent" ran at this revision
    assert [t for t in app["check"]["tasks"] if t["status"] != "skipped"] == [], app
    assert f"3 host(s) in sync; 3 task(s) check mode cannot verify, last run at {revision[:12]} on " \
           in app["message"], app
    status = shaped.controller("status").stdout
    assert "in-sync" in status and "3 task(s) check mode cannot verify, last run at" in status, status

    tasks = fleet.work / "roles/acme_agent/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Announce the agent\n"
                                         "  command: touch /var/lib/acme/announced\n")
    fleet.push("Announce the agent")
    code, result = shaped.json("sync", "--dry-run")
    assert code == 3, result
    [app] = result["apps"]
    open_items = {(t["host"], t["task"].removeprefix("acme_agent : ")) for t in app["check"]["tasks"]
                  if t["status"] == "unverified"}
    # at a new revision every command is pending again; the one its author says changes nothing never is
    assert open_items == {(host, task) for host in PLACED for task in ("Register the agent", "Announce the agent")}
    code, result = shaped.json("sync")
    assert code == 0 and result["apps"][0]["outcome"] == "converged", result
    assert all(shaped.root(name, "ls /var/lib/acme/announced") for name in PLACED)
    code, result = shaped.json("check")
    assert code == 0 and "4 task(s)" not in result["apps"][0]["message"], result
    assert "6 task(s) check mode cannot verify" in result["apps"][0]["message"], result


def test_what_real_tasks_manage_is_named_from_their_results() -> None:
    def result(**args: object) -> dict[str, object]:
        return {"changed": False, "invocation": {"module_args": {"state": "present", **args}}}

    # geerlingguy's nginx pins a version; dev-sec's os_hardening loops over sysctl values
    assert targets_of("apt", result(name=["nginx=1.24.0-1~bookworm"], deb=None)) == ("package:nginx",)
    assert targets_of("ansible.builtin.package", result(name="sudo,curl")) == ("package:sudo", "package:curl")
    assert targets_of("apt", result(deb="/var/cache/acme-agent_1.0.0_all.deb", name=[])) == ("package:acme-agent",)
    assert targets_of("ansible.posix.sysctl", {"results": [
        {"item": {"key": key}, **result(name=key, value="0", sysctl_file="/etc/sysctl.conf")}
        for key in ("net.ipv4.ip_forward", "kernel.sysrq")] + [{"skipped": True, "item": {"key": "vm.x"}}]}) == (
        "sysctl:net.ipv4.ip_forward", "/etc/sysctl.conf", "sysctl:kernel.sysrq")
    assert targets_of("ansible.posix.mount", result(path="/boot", src="LABEL=boot", fstype="ext4")) == ("mount:/boot",)
    assert targets_of("cron", result(name="report", cron_file="acme", user="acme")) == ("/etc/cron.d/acme",)
    assert targets_of("ansible.builtin.cron", result(name="report", user=None, cron_file=None)) == ("crontab:",)
    assert targets_of("service", {"name": "nginx", **result(name="nginx")}) == ("service:nginx",)
    assert targets_of("user", result(name="acme", shell="/bin/bash")) == ("user:acme",)
    # what cannot be named is only covered by a full check
    for action, args in (("apt", {"name": ["nginx*"]}), ("dnf", {"name": ["@development"]}),
                         ("apt", {"update_cache": True}), ("apt", {"deb": "https://example.invalid/agent.deb"})):
        assert targets_of(action, result(**args)) == (), (action, args)
    assert targets_of("command", result(_raw_params="pam-auth-update --package")) == ()
