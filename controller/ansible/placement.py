"""Which hosts of a run go to which execution node: Ansible's own inventory and patterns decide, in a process of
their own started with the job's environment (the repository's ansible.cfg may enable inventory plugins)."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.process import run
from controller.vocabulary import Reason

HERE = ""  # the hosts the bastion runs itself


def place(inventory: str, limit: str | None, served: Mapping[str, Sequence[str]], *, project: Path,
          env: Mapping[str, str], args: Sequence[str]) -> dict[str, list[str]]:
    """The hosts ``limit`` picks from ``inventory`` by where they run: under ``HERE``, else under the name of the
    node whose groups (``served``: node -> groups) hold them; only places with hosts are named. ``args`` are the
    job's, whose ``--vault-id``s open a vaulted inventory."""
    vaults = [value.split("@", 1) for option, value in itertools.pairwise(args) if option == "--vault-id"]
    argv = [sys.executable, "-m", "controller.ansible.placement", inventory, limit or "", json.dumps(served),
            json.dumps(vaults)]
    # an inventory Ansible cannot parse is an error here, not an empty list that would place nothing
    placed: dict[str, list[str]] = json.loads(run(argv, reason=Reason.RUNNER_FAILED, cwd=project, timeout=300,
                                                  env={**env, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True"},
                                                  what=f"reading {inventory} to place its hosts on execution nodes"))
    return placed


def _main(inventory: str, limit: str, served: Mapping[str, Sequence[str]], vaults: Sequence[Sequence[str]]) -> int:
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import VaultSecret

    loader = DataLoader()
    loader.set_vault_secrets([(label, VaultSecret(Path(path).read_bytes().strip())) for label, path in vaults])
    try:
        manager = InventoryManager(loader, sources=[inventory])
    except AnsibleError as error:  # Ansible has said why, in a warning above
        print(str(error).splitlines()[0], file=sys.stderr)
        return 2
    if limit:
        manager.subset(limit)
    where: dict[str, str] = {}
    for node, groups in served.items():
        for host in manager.get_hosts(":".join(groups)):
            if where.setdefault(host.name, node) != node:
                print(f"host {host.name} is in groups of two execution nodes, {where[host.name]} and {node}: "
                      "a host must have one place to run", file=sys.stderr)
                return 2
    placed: dict[str, list[str]] = {}
    for host in manager.get_hosts("all"):
        placed.setdefault(where.get(host.name, HERE), []).append(host.name)
    print(json.dumps(placed))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])))
