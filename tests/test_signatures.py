"""source.verify end to end: real SSH and OpenPGP signatures, git's own verification, sops and lab hosts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config
from lab.repository import git
from tests.conftest import BIN, VERSION, Fleet, write_config
from tests.support.daemon import daemon, wait_for
from tests.support.receiver import Receiver

EMAIL = "dev@example.invalid"


@dataclass(frozen=True)
class Signer:
    """How to make git sign a commit with one generated key (kept in tmp_path only)."""

    options: tuple[str, ...]
    env: dict[str, str]
    key: str                         # what git reports as the signing key (%GK)


@dataclass
class Keys:
    """Generates SSH and OpenPGP signing keys in a test's tmp_path; stops the gpg agents afterwards."""

    root: Path
    homes: list[Path] = field(default_factory=list)

    def ssh(self, name: str) -> tuple[Signer, str]:
        """A signer and its allowed-signers line."""
        key = self.root / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                       check=True, capture_output=True)
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], check=True, capture_output=True,
                                     text=True).stdout.split()[1]
        public = Path(f"{key}.pub").read_text().strip()
        return (Signer(("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"), {}, fingerprint),
                f'{EMAIL} namespaces="git" {public}\n')

    def gpg(self, name: str, keyring: Path | None = None, armor: bool = False) -> Signer:
        """A signer with an OpenPGP key of its own; its public key exported to ``keyring`` when given."""
        # short, not under the test's directory: gpg-agent's socket path must fit in 108 bytes
        home = Path(tempfile.mkdtemp(prefix=f"gnupg-{name}-"))
        self.homes.append(home)
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", f"{name} <{EMAIL}>",
                        "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
        listing = subprocess.run(["gpg", "--list-keys", "--with-colons"], env=env, check=True,
                                 capture_output=True, text=True).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        if keyring is not None:
            exported = subprocess.run(["gpg", "--export", *(["--armor"] if armor else []), fingerprint], env=env,
                                      check=True, capture_output=True).stdout
            with open(keyring, "ab") as out:
                out.write(exported)
        return Signer(("-c", "gpg.format=openpgp", "-c", f"user.signingkey={fingerprint}"),
                      {"GNUPGHOME": str(home)}, fingerprint[-16:])

    def close(self) -> None:
        for home in self.homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True,
                           check=False)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    made = Keys(tmp_path / "keys")
    made.root.mkdir()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def space() -> Iterator[Path]:
    """A workspace_dir of this test's own on tmpfs, so other runs' workspaces are not mistaken for ours."""
    path = Path(tempfile.mkdtemp(prefix="sigtest-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def configure(fleet: Fleet, space: Path, **verify: Any) -> None:
    write_config(fleet, source={"url": str(fleet.remote), "branch": "main", "verify": verify},
                 workspace_dir=str(space))


def commit(fleet: Fleet, version: str, signer: Signer | None, *, push: bool = True) -> str:
    """Commit a new ``app_version`` ("Release VERSION"), signed by ``signer`` or not at all."""
    defaults = fleet.work / "roles/app/defaults/main.yml"
    defaults.write_text(re.sub(r'(?m)^app_version:.*$', f'app_version: "{version}"', defaults.read_text()))
    git(fleet.work, "add", "-A")
    signing = [*signer.options, "commit", "-S"] if signer else ["commit", "--no-gpg-sign"]
    subprocess.run(["git", "-c", "user.name=dev", "-c", f"user.email={EMAIL}", *signing, "-q", "-m",
                    f"Release {version}"], cwd=fleet.work, env={**os.environ, **(signer.env if signer else {})},
                   check=True, capture_output=True)
    if push:
        git(fleet.work, "push", "-q", "origin", "HEAD:main")
    return git(fleet.work, "rev-parse", "HEAD")


def tamper(fleet: Fleet, sha: str, *, message: str | None = None, version: str | None = None) -> str:
    """``sha`` with its message or content changed, its signature header kept as it was; pushed."""
    raw = subprocess.run(["git", "cat-file", "commit", sha], cwd=fleet.work, check=True,
                         capture_output=True).stdout
    headers, _, body = raw.partition(b"\n\n")
    assert b"\ngpgsig " in headers
    if version is not None:
        defaults = fleet.work / "roles/app/defaults/main.yml"
        defaults.write_text(re.sub(r'(?m)^app_version:.*$', f'app_version: "{version}"', defaults.read_text()))
        git(fleet.work, "add", "-A")
        tree = git(fleet.work, "write-tree")
        headers = re.sub(rb"^tree [0-9a-f]+", b"tree " + tree.encode(), headers)
    if message is not None:
        body = message.encode() + b"\n"
    forged = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=fleet.work,
                            input=headers + b"\n\n" + body, check=True, capture_output=True,
                            ).stdout.decode().strip()
    git(fleet.work, "reset", "-q", "--hard", forged)
    git(fleet.work, "push", "-q", "--force", "origin", "HEAD:main")
    return forged


def reset(fleet: Fleet, sha: str) -> None:
    """Put the branch back at ``sha`` (what someone with push rights could do)."""
    git(fleet.work, "reset", "-q", "--hard", sha)
    git(fleet.work, "push", "-q", "--force", "origin", "HEAD:main")


class Workspaces:
    """Whatever appears in the private workspace_dir ``space`` while watched (polled every few milliseconds)."""

    def __init__(self, space: Path) -> None:
        self.space = space
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.seen.update(e.name for e in os.scandir(self.space))
            time.sleep(0.002)

    def __enter__(self) -> Workspaces:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def versions(fleet: Fleet) -> dict[str, str | None]:
    files = {h: fleet.host_file(h, VERSION) for h in ("h1", "h2")}
    return {h: f.read_text() if f.exists() else None for h, f in files.items()}


def refused(fleet: Fleet, space: Path, args: tuple[str, ...], sha: str, *needles: str,
            ) -> subprocess.CompletedProcess[str]:
    """Exit 1, one error line naming ``sha`` and why, no workspace, nothing decrypted or applied, recorded."""
    history = fleet.runs()
    before = versions(fleet)
    with Workspaces(space) as watched:
        done = fleet.controller(*args, "--progress")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("==> ")]
    assert len(errors) == 1, done.stderr
    for needle in (sha[:12], *needles):
        assert needle in errors[0], (needle, errors[0])
    assert "==> verifying commit signatures" in done.stderr
    assert "decrypting" not in done.stderr and "syntax check" not in done.stderr
    assert watched.seen == set()  # the check runs before any workspace exists
    assert versions(fleet) == before
    after = fleet.runs()
    new = after[: len(after) - len(history)]
    assert after[len(new):] == history
    assert new and all((r["outcome"], r["reason"]) == ("failed", "VerificationFailed") for r in new), new
    return done


def test_head_mode_applies_ssh_signed_commits_and_refuses_unsigned_unknown_and_tampered_ones(
        fleet_app: Fleet, keys: Keys, space: Path) -> None:
    fleet = fleet_app
    dev, dev_line = keys.ssh("dev")
    stranger, _ = keys.ssh("stranger")
    allowed = keys.root / "allowed_signers"
    allowed.write_text(dev_line)
    configure(fleet, space, mode="head", allowed_signers=str(allowed))
    good = commit(fleet, "1.1.0", dev)  # on the unsigned "Example fleet": head mode looks at the head only
    with Workspaces(space) as watched:
        first = fleet.controller("sync", "--progress")
    assert first.returncode == 0, first.stdout + first.stderr
    assert watched.seen  # the watcher does see a workspace when there is one
    assert "1 commit(s) carry good signatures" in first.stderr
    assert versions(fleet) == {"h1": "1.1.0\n", "h2": "1.1.0\n"}

    unsigned = commit(fleet, "2.0.0", None)
    done = refused(fleet, space, ("sync",), unsigned, "'Release 2.0.0'", "is not signed")
    assert "VerificationFailed" in done.stdout
    [status] = json.loads(fleet.controller("status", "--json").stdout)
    # the last good state, with the refusal of the newest revision beside it
    assert (status["state"], status["applied_revision"]) == ("converged", good)
    assert (status["failure"]["reason"], status["failure"]["revision"]) == ("VerificationFailed", unsigned)
    assert unsigned[:12] in status["failure"]["message"]
    assert f"{unsigned[:12]} refused: " in fleet.controller("status").stdout
    assert "failed [VerificationFailed]" in fleet.controller("history").stdout
    assert "is not signed" in fleet.controller("status").stdout
    count = len(fleet.runs())
    idle = fleet.controller("sync", "--only-if-changed")  # what every poll of `watch` does
    assert idle.returncode == 0 and "refused for its signatures" in idle.stdout, idle.stdout + idle.stderr
    assert len(fleet.runs()) == count
    refused(fleet, space, ("check", "--revision", unsigned), unsigned, "is not signed")  # a preview too

    unknown = commit(fleet, "3.0.0", stranger)
    refused(fleet, space, ("sync",), unknown, "is signed by an unknown key", stranger.key)

    signed = commit(fleet, "4.0.0", dev, push=False)
    forged = tamper(fleet, signed, message="Release 4.0.0 (reviewed)")
    refused(fleet, space, ("sync",), forged, "'Release 4.0.0 (reviewed)'", "has a bad signature")

    reset(fleet, signed)
    top = commit(fleet, "5.0.0", dev)  # signed, on top of unsigned, unknown-key and forged history
    applied = fleet.controller("sync")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert versions(fleet) == {"h1": "5.0.0\n", "h2": "5.0.0\n"}
    assert fleet.runs()[0]["revision"] == top


def test_all_mode_checks_every_new_commit_with_ssh_and_openpgp_keys(fleet_app: Fleet, keys: Keys, space: Path) -> None:
    fleet = fleet_app
    keyring = keys.root / "trusted.gpg"
    maintainer = keys.gpg("maintainer", keyring)
    outsider = keys.gpg("outsider")
    dev, dev_line = keys.ssh("dev")
    allowed = keys.root / "allowed_signers"
    allowed.write_text(dev_line)
    configure(fleet, space, mode="all", allowed_signers=str(allowed), gpg_keyring=str(keyring))
    good = commit(fleet, "1.1.0", maintainer)  # the first run checks the head only
    first = fleet.controller("sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert versions(fleet) == {"h1": "1.1.0\n", "h2": "1.1.0\n"}

    unsigned = commit(fleet, "2.0.0", None)
    head = commit(fleet, "2.0.1", dev)  # a good signature on top does not vouch for what is below
    refused(fleet, space, ("sync",), unsigned, "'Release 2.0.0'", f"in {good[:12]}..{head[:12]}",
            "is not signed", f"refusing {head[:12]}")

    reset(fleet, good)
    unknown = commit(fleet, "3.0.0", outsider)
    refused(fleet, space, ("sync",), unknown, "is signed by an unknown key", outsider.key)

    reset(fleet, good)
    signed = commit(fleet, "4.0.0", maintainer, push=False)
    forged = tamper(fleet, signed, version="6.6.6")  # same message and signature, other content
    refused(fleet, space, ("sync",), forged, "'Release 4.0.0'", "has a bad signature")

    reset(fleet, good)
    commit(fleet, "5.0.0", dev)
    top = commit(fleet, "5.0.1", maintainer)
    applied = fleet.controller("sync", "--progress")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "2 commit(s) carry good signatures" in applied.stderr
    assert versions(fleet) == {"h1": "5.0.1\n", "h2": "5.0.1\n"}
    assert fleet.runs()[0]["revision"] == top


def test_watch_keeps_the_last_good_revision_and_does_not_retry_a_refused_one(
        fleet_app: Fleet, keys: Keys, space: Path) -> None:
    fleet = fleet_app
    keyring = keys.root / "trusted.asc"
    maintainer = keys.gpg("maintainer", keyring, armor=True)
    receiver = Receiver()
    write_config(fleet, source={"url": str(fleet.remote), "branch": "main",
                                "verify": {"mode": "head", "gpg_keyring": str(keyring)}},
                 workspace_dir=str(space), notify=[{"url": receiver.url}],
                 watch={"poll_interval": 0.3, "backoff": 0.2, "backoff_max": 0.2, "drift_check_interval": 0,
                        "watch_local": False, "debounce": 0.1})

    def refusals() -> list[dict[str, Any]]:
        return [r for r in fleet.runs() if r["reason"] == "VerificationFailed"]

    try:
        with daemon(fleet) as watch:
            # the first run meets the unsigned "Example fleet": refused once, then left alone
            wait_for("the refusal", lambda: len(refusals()) == 1)
            time.sleep(2)  # a dozen polls and backoff retries would have run by now
            assert len(refusals()) == 1 and refusals()[0]["app"] == "*"
            assert versions(fleet) == {"h1": None, "h2": None}
            assert "nothing to do" in watch.log() and "refused for its signatures" in watch.log()

            commit(fleet, "2.0.0", maintainer)
            wait_for("the signed commit on the hosts", lambda: versions(fleet) == {"h1": "2.0.0\n", "h2": "2.0.0\n"})
            wait_for("the run to finish", lambda: fleet.runs()[0]["outcome"] == "converged")

            unsigned = commit(fleet, "3.0.0", None)
            wait_for("the second refusal", lambda: len(refusals()) == 2)
            time.sleep(2)
            assert [(r["app"], r["revision"]) for r in refusals()][:1] == [("staging", unsigned)]
            assert versions(fleet) == {"h1": "2.0.0\n", "h2": "2.0.0\n"}  # the last good revision stays
            assert watch.stop() == 0
    finally:
        receiver.server.shutdown()
    [status] = json.loads(fleet.controller("status", "--json").stdout)
    assert (status["state"], status["failure"]["reason"]) == ("converged", "VerificationFailed")
    assert receiver.events("staging")[-1:] == ["verification-failed"]
    assert receiver.events("*") == ["verification-failed"]


def test_a_verify_config_without_keys_or_with_unreadable_ones_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "controller.yml"
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/allowed_signers").write_text("")
    cases = {
        "verify: {mode: head}": "source.verify.mode: head needs trusted keys",
        "verify: {mode: sometimes, allowed_signers: keys/allowed_signers}": "source.verify.mode: must be one of",
        "verify: {mode: all, allowed_signers: keys/missing}": "source.verify.allowed_signers: cannot read",
        "verify: {mode: all, gpg_keyring: keys}": "source.verify.gpg_keyring: cannot read",
        "verify: {mode: head, allowed_signer: x}": "source.verify.allowed_signer: unknown key",
    }
    env = {**os.environ, "CONTROLLER_CONFIG": str(config)}
    for verify, needle in cases.items():
        config.write_text(f"source: {{url: x, {verify}}}\nstate_dir: state\n")
        done = subprocess.run([str(BIN / "controller"), "status"], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, (verify, done.stderr)
        assert needle in done.stderr and str(config) in done.stderr, (verify, done.stderr)
    config.write_text("source:\n  url: x\n  verify: {mode: off, allowed_signers: keys/allowed_signers}\n")
    assert load_config(config).source.verify.mode == "off"  # unquoted YAML off is not a boolean here
    config.write_text("source:\n  url: x\n  verify: {mode: head, allowed_signers: keys/allowed_signers}\n")
    loaded = load_config(config).source.verify
    assert loaded.allowed_signers == str(tmp_path / "keys/allowed_signers")  # relative to the config file
