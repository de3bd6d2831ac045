"""Commit signature verification (``source.verify``): git's own checks, against only the configured keys."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.config import Config, VerifyConfig
from controller.errors import ControllerError
from controller.process import run
from controller.source.git import Source
from controller.source.revision import Revision
from controller.vocabulary import Reason

# one commit per line: sha, git's verdict (%G?), the signing key, subject (the only field that may hold \x1f)
FORMAT = "--format=%H%x1f%G?%x1f%GK%x1f%s"
# gpg trusts every key in the private keyring (the keyring is the trust decision), never starts an
# agent that would outlive the run, and never fetches keys from anywhere
GPG_CONF = "trust-model always\nno-autostart\nno-auto-key-retrieve\n"
TIMEOUT = 600  # `all` over a long range spawns one gpg or ssh-keygen per commit


@dataclass(frozen=True)
class Verdict:
    """What git says about one commit's signature."""

    sha: str
    status: str    # %G?: G good and trusted; anything else is refused
    key: str
    subject: str

    def why(self) -> str:
        """Why the commit is refused, in words."""
        key = f" {self.key}" if self.key else ""
        if self.status == "N":
            return "is not signed"
        if self.status == "B" and self.key:
            return f"has a bad signature by{key} (the commit was changed after it was signed)"
        if self.status == "B":
            # git names no key for a bad SSH signature; a key listed without namespaces="git" looks the same
            return ("has a bad signature (the commit was changed after it was signed, or its key's "
                    'allowed_signers line lacks namespaces="git")')
        if self.status in ("U", "E") and self.key:
            # U: a good SSH signature by a key not in allowed_signers; E: gpg has no such public key
            return f"is signed by an unknown key{key}"
        if self.status == "X":
            return f"has an expired signature by{key}"
        if self.status == "Y":
            return f"is signed by an expired key{key}"
        if self.status == "R":
            return f"is signed by a revoked key{key}"
        return f"has a signature that cannot be checked (git says {self.status!r})"


def verify_revision(config: Config, source: Source, revision: Revision, applied: Sequence[str],
                    step: Callable[[str], None]) -> None:
    """Refuse ``revision`` unless the commits ``source.verify`` covers carry good signatures by trusted keys
    (``applied``: the revisions last applied to the apps of the run, where mode ``all`` starts from)."""
    settings = config.source.verify
    if settings.mode == "off":
        return
    bases = list(applied) if settings.mode == "all" else []
    since = f" since {', '.join(b[:12] for b in bases)}" if bases else (
        " (nothing applied yet: the head only)" if settings.mode == "all" else "")
    step(f"verifying commit signatures ({settings.mode}) of {revision.short}{since}")
    with _trusting(settings) as (options, env):
        def log(*revs: str) -> list[Verdict]:
            out = source.git(*options, "log", "--reverse", "--topo-order", FORMAT, *revs, "--",
                             reason=Reason.SNAPSHOT_FAILED, what=f"reading the signatures of {revision.short}",
                             env=env, timeout=TIMEOUT)
            return [Verdict(*line.split("\x1f", 3)) for line in out.splitlines() if line]

        present = [b for b in bases if source.has_commit(b)]
        if bases and not present:
            raise ControllerError(
                Reason.VERIFICATION_FAILED,
                f"cannot verify the commits since the last applied revision {bases[0][:12]}: it is no longer "
                f"in the Git cache; refusing {revision.short} (set source.verify.mode to head for one sync "
                "to accept it)")
        verdicts = log(revision.sha, *(f"^{b}" for b in present)) if present else []
        if revision.sha not in {v.sha for v in verdicts}:
            verdicts += log("-1", revision.sha)  # the head itself is always checked (nothing new in the range)
    refused = next((v for v in verdicts if v.status != "G"), None)
    if refused is not None:
        where = f" in {present[0][:12]}..{revision.short}" if len(present) == 1 else (
            f" since {', '.join(b[:12] for b in present)}" if present else "")
        target = "it" if refused.sha == revision.sha else revision.short
        raise ControllerError(
            Reason.VERIFICATION_FAILED,
            f"commit {refused.sha[:12]} {refused.subject[:80]!r}{where} {refused.why()}; refusing {target} "
            f"(source.verify.mode: {settings.mode})")
    step(f"{len(verdicts)} commit(s) carry good signatures by trusted keys")


@contextmanager
def _trusting(settings: VerifyConfig) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Git options and environment under which the configured keys, and no others, are trusted."""
    # a fresh GNUPGHOME per run: the controller user's own ~/.gnupg must never count, and a key
    # removed from gpg_keyring must stop counting at once. In the temp dir, not under state_dir:
    # gpg-agent's socket lives there and its path must fit in 108 bytes, whatever state_dir is.
    home = Path(tempfile.mkdtemp(prefix="controller-gnupg-"))
    try:
        (home / "gpg.conf").write_text(GPG_CONF)
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "GNUPGHOME": str(home),
               "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0",
               # no system or global git config may name other signers or another gpg
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
        if settings.gpg_keyring:
            run(["gpg", "--batch", "--quiet", "--import", settings.gpg_keyring], reason=Reason.CONFIG_INVALID,
                what=f"source.verify.gpg_keyring {settings.gpg_keyring}", env=env, timeout=60)
        # without allowed_signers no SSH key is trusted (git reports such signatures as unknown keys)
        signers = settings.allowed_signers or os.devnull
        yield ["-c", f"gpg.ssh.allowedSignersFile={signers}", "-c", "gpg.program=gpg",
               "-c", "gpg.ssh.program=ssh-keygen"], env
    finally:
        shutil.rmtree(home, ignore_errors=True)
