"""`python -m bench.nodes`: a check through an execution node, beside the same check from the bastion.

The reference fleet (bench/fleet.py) plus one more lab host, the node: this machine's venv shared into it, the
lab's key as its own. A no-change ``controller check`` of every host is timed from the bastion and with every
host placed on the node (``execution_nodes``), interleaved so that noise hits them alike: wall time, the
bastion's CPU (the command and all it starts; through the node that is ssh and the stream, the playbook runs on
the node) and the whole machine's (the node and the hosts run on it too). ``--update DIR`` puts the figures
into DIR's benchmarks.*.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.fleet import BenchFleet
from bench.scale import measured
from bench.ways import base_env, compared, converged, run_record, sizes_command, timed
from lab import REAL, Lab
from lab.repository import make_age_key

PREFIX = "127.0.5"  # the bench's addresses, apart from the tests'
HERE, THERE = "from the bastion", "through an execution node"


def measure(root: Path, sizes: list[int], reps: int) -> dict[str, Any]:
    """Both ways at each size, ``reps`` times in rotating order."""
    started, results = time.time(), run_record(reps)
    key = make_age_key(root / "age")
    for hosts in sizes:
        with Lab(root / f"lab{hosts}", hosts + 1, prefix=PREFIX, shared=(Path(sys.prefix),), costs=REAL) as lab:
            node = lab.hosts[-1]
            own_key = node.path("/root/.ssh/id_ed25519")  # the node's own key, authorised on the hosts
            own_key.parent.mkdir(mode=0o700, exist_ok=True)
            own_key.write_bytes(lab.private_key.read_bytes())
            own_key.chmod(0o600)
            fleet = BenchFleet(root / f"fleet{hosts}", lab, key)
            fleet.build()
            served = {f"web{h.name[1:]}": {"ansible_host": h.address} for h in lab.hosts[:-1]}
            fleet.write("inventories/bench/hosts.yml", yaml.safe_dump({"all": {"children": {"web": {
                "hosts": served}}}}))
            fleet.push("The node is no host of the fleet")
            converged(fleet, "nodes")
            configs = {HERE: fleet.variant("here"), THERE: fleet.variant("node")}
            config = yaml.safe_load(configs[THERE].read_text())
            config["execution_nodes"] = [{"name": "node", "ssh": f"ssh://root@{node.address}:{node.port}",
                                          "python": sys.executable, "groups": ["web"]}]
            configs[THERE].write_text(yaml.safe_dump(config))
            results["sizes"][str(hosts)] = compared(configs, _check, reps)
    results["duration_minutes"] = round((time.time() - started) / 60, 1)
    return results


def _check(config: Path) -> dict[str, float]:
    return measured(lambda: timed([str(Path(sys.executable).parent / "controller"), "check"],
                                  {**base_env(), "CONTROLLER_CONFIG": str(config)}), "a check")


if __name__ == "__main__":
    sizes_command("nodes", __doc__, measure, reps=5)
