"""Git, age and sops helpers for building throwaway GitOps repositories (tests, demo, benchmarks)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SOPS = Path(sys.executable).parent / "sops"


@dataclass(frozen=True)
class AgeKey:
    """A generated age identity file and its public recipient."""

    path: Path
    recipient: str


def make_age_key(directory: Path) -> AgeKey:
    """A fresh age identity in ``directory`` (never committed anywhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "age.key"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                               text=True).stdout.strip()
    return AgeKey(path, recipient)


def git(cwd: Path, *args: str) -> str:
    """Run git with a throwaway identity; return its stdout."""
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def sops_encrypt(config: Path, target: str, plaintext: str) -> str:
    """Encrypt from stdin so the plaintext never touches a disk."""
    return subprocess.run([str(SOPS), "--config", str(config), "encrypt", "--filename-override", target],
                          input=plaintext, check=True, capture_output=True, text=True).stdout


def role_remote(directory: Path, files: dict[str, str], tag: str = "v1") -> Path:
    """A bare Git remote holding one role (``files`` relative to the role), tagged ``tag``."""
    work = directory / "work"
    for relative, content in files.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_text(content)
    meta = work / "meta/main.yml"  # ansible-galaxy wants one to install a role
    if not meta.exists():
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("galaxy_info: {author: lab, description: lab role, license: MIT, "
                        "min_ansible_version: '2.15'}\ndependencies: []\n")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Role")
    git(work, "tag", tag)
    remote = directory / "role.git"
    git(directory, "clone", "-q", "--bare", str(work), str(remote))
    return remote


def collection_tarball(directory: Path, namespace: str, name: str, files: dict[str, str],
                       version: str = "1.0.0") -> Path:
    """A collection built with ``ansible-galaxy collection build`` (``files`` relative to its root)."""
    source = directory / f"{namespace}.{name}"
    (source / "meta").mkdir(parents=True, exist_ok=True)
    (source / "galaxy.yml").write_text(
        f"namespace: {namespace}\nname: {name}\nversion: {version}\nreadme: README.md\n"
        "authors: [lab]\nlicense: [MIT]\n")
    (source / "README.md").write_text(f"{namespace}.{name}\n")
    (source / "meta/runtime.yml").write_text("requires_ansible: '>=2.15'\n")
    for relative, content in files.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(content)
    subprocess.run([str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build", str(source),
                    "--output-path", str(directory), "--force"], check=True, capture_output=True)
    return directory / f"{namespace}-{name}-{version}.tar.gz"
