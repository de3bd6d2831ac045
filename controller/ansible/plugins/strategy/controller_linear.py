"""Ansible strategy: mitogen's linear strategy, with the CPU placement left to the kernel.

On a machine with 2 or 3 cores mitogen pins the strategy process, every worker and the ssh
clients to one core; unpinned, the same check ran faster here (docs/benchmarks.md). The
controller uses this strategy by default and mitogen's own ``mitogen_linear`` with
``ansible.cpu_pinning: true``.
"""

from __future__ import annotations

import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

# a plain Policy assigns nothing: every process may run on every core
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):  # type: ignore[misc,valid-type]
    """mitogen_linear without CPU pinning."""
