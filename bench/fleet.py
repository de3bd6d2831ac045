"""The reference fleet: N lab hosts and a repository of the example roles plus a synthetic role."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab import Lab
from lab.repository import AgeKey, git, sops_encrypt

ROOT = Path(__file__).resolve().parent.parent
SECRETS = "inventories/bench/group_vars/all/secrets.sops.yml"
# fake values generated for the benchmark; never a real secret
PLAIN_SECRETS = {"app_db_password": "bench-db-password", "app_api_token": "bench-api-token"}
SYNTHETIC_TASKS = 16  # file, template, copy, lineinfile in turn
# a SysV service, as the lab's hosts (no systemd) run them: the costliest thing verify's look reads
INIT_SCRIPT = """\
#!/bin/sh
### BEGIN INIT INFO
# Provides:          bench-agent
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
### END INIT INFO
PIDFILE=/run/bench-agent.pid
case "$1" in
  start) start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE \\
           --startas /bin/sh -- -c 'while :; do sleep 3600; done' ;;
  stop) start-stop-daemon --stop --quiet --oknodo --pidfile $PIDFILE --remove-pidfile ;;
  restart) "$0" stop; "$0" start ;;
  status) start-stop-daemon --status --pidfile $PIDFILE ;;
  *) exit 3 ;;
esac
"""


def synthetic_role(tasks: int) -> dict[str, str]:
    """Files of a role with ``tasks`` ordinary tasks, plus a loop task whose length is a variable."""
    body: list[dict[str, object]] = [{"name": "Bench directory", "ansible.builtin.file": {
        "path": "/srv/bench", "state": "directory", "mode": "0755"}}]
    for i in range(tasks):
        kind = i % 4
        if kind == 0:
            body.append({"name": f"Directory {i}", "ansible.builtin.file": {
                "path": f"/srv/bench/d{i}", "state": "directory", "mode": "0755"}})
        elif kind == 1:
            body.append({"name": f"Template {i}", "ansible.builtin.template": {
                "src": "bench.conf.j2", "dest": f"/srv/bench/t{i}.conf", "mode": "0644"}})
        elif kind == 2:
            body.append({"name": f"Copy {i}", "ansible.builtin.copy": {
                "content": f"copy {i}: {{{{ bench_value }}}}\n", "dest": f"/srv/bench/c{i}.txt", "mode": "0644"}})
        else:
            body.append({"name": f"Line {i}", "ansible.builtin.lineinfile": {
                "path": "/srv/bench/lines.conf", "line": f"key{i} = {{{{ bench_value }}}}", "create": True,
                "mode": "0644"}})
    # what real roles manage besides files: verify's look reads them too (a user, a group, a service)
    body += [
        {"name": "Bench group", "ansible.builtin.group": {"name": "bench", "system": True}},
        {"name": "Bench user", "ansible.builtin.user": {"name": "bench", "group": "bench", "shell": "/bin/sh",
                                                        "home": "/srv/bench", "create_home": False, "system": True}},
        {"name": "Bench agent's init script", "ansible.builtin.copy": {
            "content": INIT_SCRIPT, "dest": "/etc/init.d/bench-agent", "mode": "0755"}},
        {"name": "Bench agent", "ansible.builtin.service": {"name": "bench-agent", "state": "started",
                                                           "enabled": True}},
    ]
    body.append({"name": "Many small files (a long run of events)", "ansible.builtin.copy": {
        "content": "{{ item }}\n", "dest": "/srv/bench/loop-{{ item }}", "mode": "0644"},
        "loop": "{{ range(bench_loop | int) | list }}"})
    return {
        "tasks/main.yml": yaml.safe_dump(body, sort_keys=False),
        "defaults/main.yml": "bench_value: one\nbench_loop: 0\n",
        "templates/bench.conf.j2": "# managed from Git\nvalue = {{ bench_value }}\nhost = {{ inventory_hostname }}\n",
    }


@dataclass
class BenchFleet:
    """Everything one benchmark size needs, under ``root`` (the plaintext copy lives on tmpfs)."""

    root: Path
    lab: Lab
    key: AgeKey

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "controller.yml"

    def build(self, tasks: int = SYNTHETIC_TASKS) -> None:
        """Write the repository, push it to a bare remote, and write the bastion config."""
        self.root.mkdir(parents=True, exist_ok=True)
        git(self.root, "init", "-q", "--bare", "-b", "main", str(self.remote))
        work = self.work
        work.mkdir()
        for name in ("ansible.cfg", ".sops.yaml", "playbooks", "roles"):
            source = ROOT / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
        for relative, text in synthetic_role(tasks).items():
            self.write(f"roles/bench/{relative}", text)
        self.write("playbooks/bench.yml", (ROOT / "playbooks/site.yml").read_text() + yaml.safe_dump([{
            "name": "Synthetic role", "hosts": "all", "gather_facts": False, "roles": ["bench"]}]))
        self.write("gitops.yml", yaml.safe_dump({"apps": [
            {"name": "fleet", "playbook": "playbooks/bench.yml", "inventory": "inventories/bench"}]}))
        hosts = {f"web{h.name[1:]}": {"ansible_host": h.address} for h in self.lab.hosts}
        self.write("inventories/bench/hosts.yml", yaml.safe_dump({"all": {"children": {"web": {"hosts": hosts}}}}))
        shutil.copy(ROOT / "inventories/staging/group_vars/all/connection.yml", self._group_vars("connection.yml"))
        self.write("inventories/bench/group_vars/all/main.yml", "base_env_name: bench\n")
        sops_config = work / ".sops.yaml"
        sops_config.write_text(sops_config.read_text().replace("REPLACE_WITH_YOUR_AGE_RECIPIENT",
                                                               self.key.recipient))
        self.write(SECRETS, sops_encrypt(sops_config, SECRETS, yaml.safe_dump(PLAIN_SECRETS)))
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(self.remote))
        self.push("Benchmark fleet")
        self.config.write_text(yaml.safe_dump({
            "source": {"url": str(self.remote), "branch": "main"},
            "state_dir": str(self.root / "state"),
            "sops": {"age_key_file": str(self.key.path)},
            "ssh": {"private_key_file": str(self.lab.private_key), "known_hosts_file": str(self.lab.known_hosts)},
        }))

    def variant(self, name: str, **ansible: Any) -> Path:
        """A copy of the bastion config with other ``ansible`` settings and a state directory of its own
        (its runs would otherwise replace the host manifests that `controller verify` compares with)."""
        path = self.root / f"controller-{name}.yml"
        config = yaml.safe_load(self.config.read_text())
        config["ansible"] = {**config.get("ansible", {}), **ansible}
        config["state_dir"] = str(self.root / f"state-{name}")
        path.write_text(yaml.safe_dump(config))
        return path

    def write(self, relative: str, text: str) -> None:
        target = self.work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def push(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")

    def set_defaults(self, value: str, loop: int = 0) -> str:
        """A one-line change of what every host gets (``bench_value``), committed and pushed."""
        self.write("roles/bench/defaults/main.yml", f"bench_value: {value}\nbench_loop: {loop}\n")
        return self.push(f"bench_value {value}, loop {loop}")

    def plaintext_project(self) -> Path:
        """A copy of the working tree with the secrets in plain text, on tmpfs, for plain Ansible runs."""
        copy = Path(tempfile.mkdtemp(prefix="bench-plain-", dir="/dev/shm"))
        shutil.copytree(self.work, copy / "project", ignore=shutil.ignore_patterns(".git"))
        (copy / "project" / SECRETS).write_text(yaml.safe_dump(PLAIN_SECRETS))
        return copy / "project"

    def _group_vars(self, name: str) -> Path:
        path = self.work / "inventories/bench/group_vars/all" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
