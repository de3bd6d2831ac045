"""The ansible-playbook the controller starts: Ansible's own, with what each start of it parses kept between runs.

Before it reads a playbook, every ansible-playbook process parses ansible-core's configuration definitions
(base.yml) and its plugin routing (ansible_builtin_runtime.yml, about 10,000 lines), and each collection's
meta/runtime.yml when it first loads from that collection: about 0.1 s of CPU in every syntax check, check and
apply, with the same result each time (docs/benchmarks.md). Where CONTROLLER_PARSED_CACHE names a directory
(the controller sets it to one in its state dir) each result is kept there (Kept) under a hash of the text it
was parsed from, and read back instead. Only plain data is kept, what marshal writes: anything else is parsed
every time. Installed as ``controller-ansible-playbook``, beside ``controller``: as for Ansible's own script,
Python looks for modules where it is installed, never in the working directory (the repository).
"""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Callable
from typing import Any

CACHE = "CONTROLLER_PARSED_CACHE"
PREFIX = "ansible-parsed-"


def command() -> list[str]:
    """The start of the command line of every ansible-playbook the controller runs (found on the job's PATH, as
    ``ansible-playbook`` is: beside this Python)."""
    return ["controller-ansible-playbook"]


def keep_parses(directory: str) -> None:
    """Ansible's start-up parses, kept in ``directory``; called before ``ansible.constants`` parses base.yml."""
    import ansible
    import ansible.config.manager as manager
    import ansible.utils.collection_loader._collection_finder as finder
    import yaml

    from controller.ansible.plugins.kept import Kept

    # a parse is only as good as the parser: another ansible-core or PyYAML starts afresh
    kept = Kept(directory, PREFIX, f"{ansible.__version__}-{yaml.__version__}-{marshal.version}")

    def keeping(kind: str, parse: Callable[..., Any]) -> Callable[..., Any]:
        def parsed(text: Any, *args: Any) -> Any:
            raw = text.read() if hasattr(text, "read") else text  # base.yml comes as an open file
            # more than plain data (a date, a tagged value) marshal refuses: not kept, parsed each time
            return kept.through(kept.key(kind, type(raw).__name__, raw), lambda: parse(raw, *args), marshal.dumps,
                                marshal.loads)
        return parsed

    manager.yaml_load = keeping("config definitions", manager.yaml_load)
    finder._meta_yml_to_dict = keeping("collection routing", finder._meta_yml_to_dict)


def main() -> None:
    """``ansible-playbook ARG...``."""
    directory = os.environ.get(CACHE)
    if directory:
        keep_parses(directory)
    from ansible.cli.playbook import main as playbook

    sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")  # as its own script has it
    playbook()


if __name__ == "__main__":
    main()
