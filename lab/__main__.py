"""``python -m lab up|down|status``: run a lab from the shell (the demo and molecule use this)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab import DEFAULT_PORT, Lab, LabError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, required=True, help="the lab's directory (keys, host roots)")
    parser.add_argument("--hosts", type=int, default=3, help="how many hosts (default 3)")
    parser.add_argument("--prefix", default="127.0.1",
                        help="address prefix; host i is PREFIX.i (past 250, on the next /24s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"sshd port (default {DEFAULT_PORT})")
    args = parser.parse_args()
    lab = Lab(args.dir, args.hosts, prefix=args.prefix, port=args.port, die_with_parent=False)
    try:
        if args.action == "up":
            lab.start()
            for host in lab.hosts:
                print(f"{host.name} {host.address}:{host.port} /srv -> {host.root}")
            print(f"ssh -i {lab.private_key} -o UserKnownHostsFile={lab.known_hosts} "
                  f"-p {lab.port} root@{lab.hosts[0].address}")
        elif args.action == "down":
            lab.stop()
        else:
            running = (args.dir / "lab.json").exists()
            print("running" if running else "stopped")
            return 0 if running else 3
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
