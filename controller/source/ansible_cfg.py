"""The repository's ``ansible.cfg``, read in one place with one error policy.

The controller reads it for its own decisions (which settings the repository already makes, where its
roles and inventory are); Ansible reads it again for itself. A file Ansible could not read either is
one line naming ``ansible.cfg``; no file is an empty configuration.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from controller.errors import ControllerError
from controller.vocabulary import Reason

ANSIBLE_CFG = "ansible.cfg"


def read_ansible_cfg(project: Path) -> configparser.ConfigParser:
    """The ``ansible.cfg`` at the root of the checkout at ``project`` (sections and keys as Ansible reads them)."""
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(project / ANSIBLE_CFG, encoding="utf-8")
    except configparser.Error as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f"{ANSIBLE_CFG}: {exc.message.splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ControllerError(Reason.CONFIG_INVALID, f"{ANSIBLE_CFG}: not UTF-8 text") from None
    return cfg
