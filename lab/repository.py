"""Git, age and sops helpers for building throwaway GitOps repositories (tests, demo, benchmarks)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

SOPS = Path(sys.executable).parent / "sops"
SOURCES = Path(__file__).resolve().parent.parent / "demo" / "sources"


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



def write_tree(directory: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> content) under ``directory``; return it."""
    for relative, content in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(content)
    return directory


def role_remote(remote: Path, files: dict[str, str], tag: str = "v1") -> Path:
    """A bare Git remote at ``remote`` holding one role (``files`` relative to the role), tagged ``tag``."""
    work = write_tree(remote.with_name(f".{remote.name}-work"), files)
    meta = work / "meta/main.yml"  # ansible-galaxy wants one to install a role
    if not meta.exists():
        write_tree(work, {"meta/main.yml": "galaxy_info: {author: lab, description: lab role, license: MIT, "
                                           "min_ansible_version: '2.15'}\ndependencies: []\n"})
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "Role")
    git(work, "tag", tag)
    git(work, "clone", "-q", "--bare", str(work), str(remote))
    return remote


def collection_tarball(source: Path, output: Path) -> Path:
    """Build the collection at ``source`` (its ``galaxy.yml``) into ``output``; the tarball's path."""
    meta = yaml.safe_load((source / "galaxy.yml").read_text())
    subprocess.run([str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "build", str(source),
                    "--output-path", str(output), "--force"], check=True, capture_output=True)
    return output / f"{meta['namespace']}-{meta['name']}-{meta['version']}.tar.gz"


def debian_package(source: Path, output: Path) -> Path:
    """Build the package whose tree (with ``DEBIAN/control``) is ``source`` into ``output``; its path."""
    control = dict(line.split(": ", 1) for line in (source / "DEBIAN/control").read_text().splitlines()
                   if ": " in line and not line.startswith(" "))
    package = output / f"{control['Package']}_{control['Version']}_{control['Architecture']}.deb"
    output.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(source), str(package)], check=True,
                   capture_output=True)
    return package


def publish_sources(target: Path) -> Path:
    """What the example repository takes from elsewhere (``demo/sources``), published under ``target``
    as the bastion's mirror would hold it: a role's Git remote, a collection tarball, a package."""
    target.mkdir(parents=True, exist_ok=True)
    role = SOURCES / "role-motd"
    role_remote(target / "role-motd.git",
                {str(p.relative_to(role)): p.read_text() for p in role.rglob("*") if p.is_file()}, tag="v1.0.0")
    collection_tarball(SOURCES / "ops.toolkit", target)
    debian_package(SOURCES / "shop-tools", target)
    return target
