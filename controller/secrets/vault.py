"""Ansible Vault: give the job the bastion's vault passwords, and learn every vaulted value to mask it.

Ansible decrypts vaulted files and inline ``!vault`` values itself, as usual; the job only gets
the password files' paths (``--vault-id id@FILE``), never a password in argv or the environment.
The controller decrypts the same values in memory, once, so that they are masked like SOPS values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.config import AnsibleConfig
from controller.errors import ControllerError
from controller.secrets.redact import Redactor
from controller.secrets.sops import read_secret_file, scalars
from controller.vocabulary import Reason

HEADER = b"$ANSIBLE_VAULT;"
YAML_SUFFIXES = ("", ".yml", ".yaml", ".json")  # where inline !vault values can be
DEFAULT_ID = "default"


def vault_args(settings: AnsibleConfig) -> tuple[str, ...]:
    """``--vault-id`` arguments for ansible-playbook: labels and file paths only."""
    ids = _identities(settings)
    return tuple(arg for label, path in ids for arg in ("--vault-id", f"{label}@{path}"))


def learn_vaulted(project: Path, settings: AnsibleConfig) -> Redactor:
    """Every value the repository keeps in Ansible Vault, decrypted in memory, as a redactor."""
    ids = _identities(settings)
    if not ids:
        return Redactor()
    from ansible.errors import AnsibleError  # Ansible's import is slow: only when a vault is configured
    from ansible.parsing.vault import VaultLib, VaultSecret

    secrets = [(label, VaultSecret(read_secret_file(path, f"vault password file (vault id {label})",
                                                    Reason.DECRYPTION_FAILED))) for label, path in ids]
    vault = VaultLib(secrets)
    values: list[str] = []
    for path in _candidates(project):
        relative = path.relative_to(project).as_posix()
        data = path.read_bytes()
        try:
            if data.lstrip().startswith(HEADER):
                values.extend(_leaves_of(vault.decrypt(data).decode(errors="replace")))
            elif b"!vault" in data:
                values.extend(_inline(data.decode(errors="replace"), vault))
        except AnsibleError:
            raise ControllerError(Reason.DECRYPTION_FAILED,
                                  f"{relative}: cannot decrypt with the vault password(s) of ansible.vault_password_"
                                  "file / ansible.vault_ids (wrong password, or a vault id not configured)") from None
        except yaml.YAMLError:
            raise ControllerError(Reason.DECRYPTION_FAILED,
                                  f"{relative}: not valid YAML around a !vault value") from None
    return Redactor(values)


def _identities(settings: AnsibleConfig) -> list[tuple[str, str]]:
    ids = [(DEFAULT_ID, settings.vault_password_file)] if settings.vault_password_file else []
    return ids + [(v.id, v.password_file) for v in settings.vault_ids]


def _candidates(project: Path) -> Iterator[Path]:
    """Every vaulted file whatever its name (a copy source, a template, a key), and YAML that may hold !vault."""
    for directory, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as head:
                vaulted = head.read(64).lstrip().startswith(HEADER)
            if vaulted or path.suffix in YAML_SUFFIXES:
                yield path


def _leaves_of(text: str) -> list[str]:
    """The values of a decrypted vault file: its YAML leaves, or the text itself when it is not YAML."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    found = scalars(data) if isinstance(data, (dict, list)) else []
    return [*found, text]


def _inline(text: str, vault: Any) -> list[str]:
    """The decrypted ``!vault`` values of a YAML file (its other values are not secrets)."""
    found: list[str] = []

    class Loader(yaml.SafeLoader):
        pass

    def decrypt(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        value = str(vault.decrypt(str(loader.construct_scalar(node))).decode(errors="replace"))  # type: ignore[arg-type]
        found.append(value)
        return value

    Loader.add_constructor("!vault", decrypt)
    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]
    for _ in yaml.load_all(text, Loader=Loader):
        pass
    return found
