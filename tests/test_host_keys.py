"""Host keys: the bastion decides. A host with the wrong key gets nothing; the others converge."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import VERSION, Fleet, write_config


def other_key(directory: Path) -> str:
    """The public half of a freshly generated host key: what an impostor would present."""
    path = directory / "impostor_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def trust_wrong_key_for(fleet: Fleet, host: str) -> Path:
    """A known_hosts file in which ``host`` has another key than the one it presents."""
    address = fleet.lab.host(host).address
    lines = fleet.lab.known_hosts.read_text().splitlines()
    wrong = other_key(fleet.root)
    known = fleet.root / "known_hosts"
    known.write_text("".join(f"{line.split()[0]} {wrong}\n" if line.startswith(f"[{address}]") else f"{line}\n"
                             for line in lines))
    return known


@pytest.mark.parametrize("strategy", ["mitogen", "linear"])
def test_a_host_with_the_wrong_key_receives_nothing_even_if_the_repository_says_not_to_check(
        fleet_app: Fleet, strategy: str) -> None:
    fleet = fleet_app
    cfg = fleet.work / "ansible.cfg"
    cfg.write_text(cfg.read_text().replace("[defaults]", "[defaults]\nhost_key_checking = False", 1))
    fleet.push("Turn host key checking off, as some repositories do")
    known = trust_wrong_key_for(fleet, "h2")
    write_config(fleet, ssh={"private_key_file": str(fleet.lab.private_key), "known_hosts_file": str(known),
                             "host_key_checking": "strict"}, ansible={"strategy": strategy})

    done = fleet.controller("sync", "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ignored: ssh.host_key_checking is strict" in done.stderr
    assert done.stderr.count("host key checking") == 1  # said once, not per phase or per host
    assert fleet.host_file("h1", VERSION).read_text() == "1.0.0\n"
    assert not fleet.host_file("h2", VERSION).exists()
    assert not any(fleet.lab.host("h2").root.iterdir())  # nothing at all reached it
    run = fleet.runs()[0]
    assert (run["outcome"], run["reason"]) == ("partial", "HostUnreachable")
    shown = fleet.controller("show", str(run["id"]))
    assert "web2.staging  unreachable" in shown.stdout and "host key mismatch" in shown.stdout


def test_accept_new_records_a_first_key_and_refuses_a_changed_one(fleet_app: Fleet) -> None:
    fleet = fleet_app
    known = fleet.root / "fresh_known_hosts"  # nothing known yet: the default policy records what it meets
    write_config(fleet, ssh={"private_key_file": str(fleet.lab.private_key), "known_hosts_file": str(known)})
    assert fleet.controller("sync").returncode == 0
    for host in ("h1", "h2"):  # Debian's ssh hashes the names it records: ask ssh-keygen
        found = subprocess.run(["ssh-keygen", "-F", f"[{fleet.lab.host(host).address}]:2222", "-f", str(known)],
                               capture_output=True, text=True, check=False)
        assert found.returncode == 0 and "ssh-ed25519" in found.stdout

    # h1's key changes (a reinstalled server, or someone answering on its address): refused
    name = f"[{fleet.lab.host('h1').address}]:2222"
    subprocess.run(["ssh-keygen", "-R", name, "-f", str(known)], check=True, capture_output=True)
    with known.open("a") as append:
        append.write(f"{name} {other_key(fleet.root)}\n")
    fleet.host_file("h1", VERSION).write_text("changed by hand\n")
    code, report = fleet.controller_json("check")
    assert code == 2
    statuses = {h["host"]: h["status"] for h in report["apps"][0]["check"]["hosts"]}
    assert statuses == {"web1.staging": "unreachable", "web2.staging": "ok"}
    assert fleet.host_file("h1", VERSION).read_text() == "changed by hand\n"
