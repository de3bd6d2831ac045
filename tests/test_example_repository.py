"""The example repository on its own: applied with ansible-runner, idempotent, check mode honest."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

from lab import Lab
from tests.conftest import BIN, EXAMPLE, ROOT


def play(project: Path, lab: Lab, check: bool = False) -> dict[str, Any]:
    """Apply (or check) playbooks/site.yml on the staging inventory; return the recap."""
    (project.parent / "runner").mkdir(exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(project.parent / "runner"), project_dir=str(project),
        playbook="playbooks/site.yml", inventory=str(project / "inventories/staging"),
        cmdline="--check --diff" if check else "--diff", quiet=True,
        envvars={"PATH": f"{BIN}:/usr/bin:/bin", "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
                 "ANSIBLE_PRIVATE_KEY_FILE": str(lab.private_key),
                 "ANSIBLE_SSH_ARGS": f"-o UserKnownHostsFile={lab.known_hosts} -o ControlMaster=auto "
                                     f"-o ControlPersist=30s -o ControlPath={lab.control_dir}/%C"})
    assert runner.status == "successful", runner.stdout.read()
    changed = [(e["event_data"]["host"], e["event_data"]["task"]) for e in runner.events
               if e["event"] == "runner_on_ok" and e["event_data"]["res"].get("changed")]
    return {"changed": sorted(changed), "stats": runner.stats}


def test_example_roles_converge_idempotently_and_check_mode_tells_the_truth(tmp_path: Path, lab: Lab) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in EXAMPLE:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name)
    hosts = {"web1.staging": lab.host("h1"), "web2.staging": lab.host("h2")}
    (project / "inventories/staging/hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"web": {
        "hosts": {name: {"ansible_host": h.address} for name, h in hosts.items()}}}}}))
    (project / "inventories/staging/group_vars/all/secrets.yml").write_text(
        "app_db_password: example-password\napp_api_token: example-token\n")

    first = play(project, lab)
    assert len(first["changed"]) == 2 * 11  # every task and the handler, on both hosts
    for name, host in hosts.items():
        assert host.path("/srv/etc/motd").read_text().startswith(f"{name} (staging)\n")
        assert "vm.swappiness = 10" in host.path("/srv/etc/sysctl.d/99-gitops.conf").read_text()
        assert "alice ALL=(ALL) NOPASSWD: ALL" in host.path("/srv/etc/sudoers.d/admins").read_text()
        assert host.path("/srv/opt/shop/VERSION").read_text() == "1.0.0\n"
        assert host.path("/srv/opt/shop/conf/app.env").read_text() == "APP_API_TOKEN=example-token\n"
        assert oct(host.path("/srv/opt/shop/conf/app.env").stat().st_mode & 0o777) == "0o600"
        assert host.path("/srv/opt/shop/run/restarted").exists()
    assert "log_level: debug" in hosts["web1.staging"].path("/srv/opt/shop/conf/app.yml").read_text()
    assert "log_level: info" in hosts["web2.staging"].path("/srv/opt/shop/conf/app.yml").read_text()
    assert not lab.host("h3").path("/srv/etc/motd").exists()

    assert play(project, lab, check=True)["changed"] == []

    motd = hosts["web2.staging"].path("/srv/etc/motd")
    motd.write_text("edited by hand\n")
    checked = play(project, lab, check=True)
    assert motd.read_text() == "edited by hand\n"  # check mode changed nothing
    applied = play(project, lab)
    # idempotent: the second apply changes the hand-edited file and nothing else, as check mode said
    assert checked["changed"] == applied["changed"] == [("web2.staging", "Render the login banner")]
    assert motd.read_text().startswith("web2.staging (staging)")
