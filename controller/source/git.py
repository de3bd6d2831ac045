"""The Git side: fetch the watched branch into a cache, resolve revisions, unpack one commit's tree."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from controller.errors import ControllerError
from controller.process import answer, finish, run, stream
from controller.source.revision import Revision
from controller.vocabulary import MASK, Reason

# Git must never run code from what it fetches: no hooks, no submodules, no fsmonitor. Passed
# with -c on every command, so nothing written into the cache's own config can undo it.
HARDENING = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "fetch.recurseSubmodules=false",
             "submodule.recurse=false", "gc.auto=0",  # keep replaced commits: a rewrite stays detectable
             "protocol.ext.allow=never", "credential.helper=")
REMOTE_REFS = "refs/remotes/origin"
ASKPASS = ('#!/bin/sh\n'
           'case "$1" in Username*) echo "$CONTROLLER_GIT_USERNAME";; *) echo "$CONTROLLER_GIT_PASSWORD";; esac\n')


@dataclass(frozen=True)
class RemoteUrl:
    """A remote URL split into what may be shown and the credentials that may not."""

    shown: str
    bare: str                       # what git is given: the URL without user or password
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RemoteUrl:
        """Split ``https://user:token@host/path`` so the token reaches no argv, message or log."""
        parts = urlsplit(url)
        # ssh:// user names (git@) are not secrets; over http(s) a lone user name is often a token
        if parts.scheme not in ("http", "https") or parts.username is None:
            return cls(url, url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        bare = urlunsplit(parts._replace(netloc=netloc))
        user = f"{parts.username}:{MASK}@" if parts.password is not None else f"{MASK}@"
        password = unquote(parts.password) if parts.password is not None else None
        return cls(urlunsplit(parts._replace(netloc=user + netloc)), bare, unquote(parts.username), password)

    def mask(self, text: str) -> str:
        """``text`` with the credentials masked (git may echo them); a lone user name is a token too."""
        secret = self.password if self.password is not None else self.username
        for form in {secret, quote(secret, safe="")} if secret else ():
            text = text.replace(form, MASK)
        return text


class Source:
    """A full (non-shallow) bare cache of the remote under the state directory."""

    def __init__(self, url: str, branch: str, cache: Path, timeout: float = 120) -> None:
        self.url = RemoteUrl.parse(url)
        self.branch = branch
        self.cache = cache
        self.timeout = timeout
        if not (cache / "HEAD").exists():
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.git("init", "--quiet", "--bare", str(cache), what=f"cannot create the Git cache {cache}",
                      reason=Reason.FETCH_FAILED, git_dir=False)

    def fetch(self) -> Revision:
        """Fetch every branch from the remote and return the watched branch's head."""
        self.git("fetch", "--no-recurse-submodules", "--prune", "--no-tags", "--quiet", self.url.bare,
                 f"+refs/heads/*:{REMOTE_REFS}/*", what=f"cannot fetch {self.url.shown}",
                 reason=Reason.FETCH_FAILED, timeout=self.timeout, env=self._credentials())
        return self.head()

    def head(self) -> Revision:
        """The watched branch's head as last fetched."""
        sha = self._commit(f"{REMOTE_REFS}/{self.branch}")
        if sha is None:
            raise ControllerError(Reason.REVISION_NOT_FOUND, f"branch {self.branch!r} not found in {self.url.shown}")
        return self._revision(sha)

    def resolve(self, rev: str) -> Revision:
        """A commit of the cache by SHA (or a remote branch name, for previews)."""
        sha = self._commit(rev) or self._commit(f"{REMOTE_REFS}/{rev}")
        if sha is None:
            raise ControllerError(Reason.REVISION_NOT_FOUND,
                                  f"revision {rev!r} not found in {self.url.shown} (fetched all branches)")
        return self._revision(sha)

    def descends(self, ancestor: str, sha: str) -> bool:
        """Whether ``sha`` is ``ancestor`` or a descendant of it (a fast-forward)."""
        code, _ = answer(self._argv("merge-base", "--is-ancestor", ancestor, sha), answers=(0, 1), env=self._env(),
                         reason=Reason.FETCH_FAILED, what=f"comparing {ancestor[:12]} with {sha[:12]}")
        return code == 0

    def changed(self, since: str, sha: str) -> list[str] | None:
        """The paths a commit range changes (both sides of a rename); None when ``since`` is not in the cache."""
        if not self.has_commit(since):
            return None
        out = self.git("diff", "--name-only", "--no-renames", "-z", since, sha, "--",
                       what=f"comparing {since[:12]} with {sha[:12]}", reason=Reason.FETCH_FAILED)
        return [path for path in out.split("\0") if path]

    def extract(self, sha: str, destination: Path) -> None:
        """Write exactly the tree of ``sha`` into ``destination``: no untracked files, no leftovers.

        Every member is checked here rather than by tarfile's extraction filters, which
        Debian 12's Python (3.11.2) does not have; a refused member stops git at once.
        """
        argv = self._argv("archive", "--format=tar", sha)
        with stream(argv, env=self._env()) as proc:
            assert proc.stdout is not None
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                    links = [m for m in archive if _unpack(archive, m, destination)]
            except (tarfile.TarError, _Refused) as exc:
                raise ControllerError(Reason.SNAPSHOT_FAILED, f"refusing revision {sha[:12]}: {exc}") from None
            finish(proc, argv, reason=Reason.SNAPSHOT_FAILED, what=f"cannot unpack revision {sha[:12]}")
        for link in links:  # every link exists now, so a chain of links resolves for real
            if not _inside(destination, destination / link.name):
                raise ControllerError(Reason.SNAPSHOT_FAILED,
                                      f"refusing revision {sha[:12]}: {link.name} is a link out of the checkout")

    def _commit(self, rev: str) -> str | None:
        """The commit ``rev`` names in the cache, or None when it names none (``^{commit}``: not a tree or blob)."""
        code, out = answer(self._argv("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"),
                           answers=(0, 1), env=self._env(), reason=Reason.FETCH_FAILED,
                           what=f"looking up {rev!r} in the Git cache")
        return out.strip() if code == 0 else None

    def _revision(self, sha: str) -> Revision:
        out = self.git("log", "-1", "--no-show-signature", "--format=%H%x00%s%x00%an%x00%ct", sha, "--",
                       what=f"reading commit {sha[:12]}", reason=Reason.FETCH_FAILED)
        sha, subject, author, stamp = out.rstrip("\n").split("\x00")
        when = datetime.fromtimestamp(int(stamp), tz=UTC).isoformat()
        return Revision(sha, subject, author, when)

    def _argv(self, *args: str, git_dir: bool = True) -> list[str]:
        config = [item for pair in HARDENING for item in ("-c", pair)]
        return ["git", *config, *([f"--git-dir={self.cache}"] if git_dir else []), *args]

    def git(self, *args: str, what: str, reason: Reason, timeout: float = 60, git_dir: bool = True,
            env: Mapping[str, str] | None = None) -> str:
        """Run git on the cache, hardened, with ``env`` added to its environment; its stdout."""
        return run(self._argv(*args, git_dir=git_dir), env={**self._env(), **(env or {})}, reason=reason,
                   what=what, timeout=timeout, redact=self.url.mask)

    def has_commit(self, sha: str) -> bool:
        """Whether the cache holds commit ``sha``."""
        return self._commit(sha) is not None

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                "GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
                "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}

    def _credentials(self) -> dict[str, str]:
        """What a fetch adds to git's environment: credentials reach git through askpass, never argv."""
        if self.url.username is None:
            return {}
        helper = self.cache.parent / "git-askpass"  # holds no secret: it prints the two variables
        if not helper.exists() or helper.read_text() != ASKPASS:
            helper.write_text(ASKPASS)
        helper.chmod(0o700)
        return {"GIT_ASKPASS": str(helper), "CONTROLLER_GIT_USERNAME": self.url.username,
                "CONTROLLER_GIT_PASSWORD": self.url.password or ""}


class _Refused(Exception):
    """A member of the archive that must not be written."""


def _unpack(archive: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> bool:
    """Write one member; True for a symbolic link (checked again once all are written)."""
    name = member.name
    target = destination / name
    if name.startswith("/") or ".." in Path(name).parts:
        raise _Refused(f"{name}: path leaves the checkout")
    expected = os.path.normpath(os.path.join(os.path.realpath(destination), os.path.dirname(name)))
    if os.path.realpath(target.parent) != expected:
        raise _Refused(f"{name}: written through a link")
    if member.isdir():
        target.mkdir(mode=0o755, exist_ok=True)
        return False
    if member.issym():
        if os.path.isabs(member.linkname) or not _inside(destination, target.parent / member.linkname):
            raise _Refused(f"{name} is a link out of the checkout ({member.linkname})")
        os.symlink(member.linkname, target)
        return True
    if not member.isreg():
        raise _Refused(f"{name}: not a file, directory or link")
    source = archive.extractfile(member)
    assert source is not None
    mode = 0o755 if member.mode & stat.S_IXUSR else 0o644  # as git checks out; the 0700 workspace root guards it
    with source, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)
    return False


def _inside(root: Path, path: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root).rstrip("/") + "/") or \
        os.path.realpath(path) == os.path.realpath(root)
