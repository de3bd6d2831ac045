"""Ansible Vault: vaulted values are deployed, masked everywhere, and a wrong password applies nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid

from tests.conftest import BIN, VERSION, Fleet, bump_version, secret, write_config
from tests.support.processes import ProcWatch

DEPLOYED = "/srv/opt/shop/conf/vaulted.txt"
KEY = "/srv/opt/shop/conf/service.key"


def vault(fleet: Fleet, plaintext: str, *args: str) -> str:
    """``ansible-vault`` reading the plaintext from stdin, so it never lies in a file or an argv."""
    password = fleet.root / "vault.pass"
    return subprocess.run([str(BIN / "ansible-vault"), *args, "--vault-password-file", str(password)],
                          input=plaintext, cwd=fleet.work, capture_output=True, text=True, check=True).stdout


def test_vaulted_values_are_deployed_and_masked_and_a_wrong_password_is_refused(fleet_app: Fleet) -> None:
    fleet = fleet_app
    # the password lives in a file on the bastion, like the age key: not one of the sweep's plaintexts
    password = f"vault-password-{uuid.uuid4().hex}"
    token, note, key = secret("vault-inline"), secret("vault-file"), secret("vault-copy-source")
    (fleet.root / "vault.pass").write_text(password + "\n")
    group_vars = "inventories/staging/group_vars/all"
    fleet.write(f"{group_vars}/vault.yml", vault(fleet, token, "encrypt_string", "--stdin-name", "app_feature_token"))
    fleet.write(f"{group_vars}/vaulted.yml", vault(fleet, f"app_vault_note: {note}\n", "encrypt", "--output", "-"))
    # a vaulted file under any name, copied as it is: Ansible decrypts copy sources too
    fleet.write("roles/app/files/service.key", vault(fleet, f"{key}\n", "encrypt", "--output", "-"))
    tasks = fleet.work / "roles/app/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Write the vaulted values\n  ansible.builtin.copy:\n"
                     "    content: \"{{ app_feature_token }}\\n{{ app_vault_note }}\\n\"\n"
                     f"    dest: {DEPLOYED}\n    mode: '0600'\n"
                     f"- name: Install the service key\n  ansible.builtin.copy:\n    src: service.key\n"
                     f"    dest: {KEY}\n    mode: '0600'\n")
    fleet.push("Vaulted values")
    write_config(fleet, ansible={"vault_password_file": str(fleet.root / "vault.pass")})

    with ProcWatch([password, token, note, key]) as watch:
        done = fleet.controller("sync")
    assert done.returncode == 0, done.stdout + done.stderr
    # no password or value in any argv or environment
    assert "controller-ansible-playbook" in watch.programs and watch.found == set()
    for host in ("h1", "h2"):
        assert fleet.host_file(host, DEPLOYED).read_text() == f"{token}\n{note}\n"
        assert fleet.host_file(host, KEY).read_text() == f"{key}\n"

    fleet.host_file("h1", DEPLOYED).write_text("edited by hand\n")
    fleet.host_file("h1", KEY).write_text("another key\n")
    drift = fleet.controller("check")
    assert drift.returncode == 2
    assert "+[redacted]" in drift.stdout
    outputs = drift.stdout + drift.stderr + done.stdout + done.stderr + fleet.controller("show", "2").stdout
    with sqlite3.connect(fleet.state / "state.db") as db:
        stored = "\n".join(db.iterdump())
    assert drift.stdout.count("+[redacted]") >= 3  # the two values and the key, each masked in its diff
    for plaintext in (password, token, note, key):
        assert plaintext not in outputs and plaintext not in stored

    (fleet.root / "vault.pass").write_text("not-the-password\n")
    bump_version(fleet, "6.6.6")
    refused = fleet.controller("sync")
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert "cannot decrypt with the vault password" in line
    assert any(name in line for name in ("group_vars/all/vault", "files/service.key"))  # names the file
    assert fleet.host_file("h1", VERSION).read_text() == "1.0.0\n"
    assert fleet.host_file("h1", DEPLOYED).read_text() == "edited by hand\n"
