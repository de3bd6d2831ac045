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
