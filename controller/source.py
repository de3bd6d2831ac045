"""The Git side: fetch the watched branch into a cache and resolve revisions (GitPython)."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import git

from controller.errors import ControllerError
from controller.outcomes import Reason
from controller.process import first_line

# Git must never run code from what it fetches: no hooks, no submodules, no prompts.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
HARDENING = {
    "core.hooksPath": "/dev/null",
    "fetch.recurseSubmodules": "false",
    "submodule.recurse": "false",
    "gc.auto": "0",  # keep replaced commits so a rewrite can still be told from a fast-forward
}


@dataclass(frozen=True)
class Revision:
    """One commit of the source: what the controller reconciles to."""

    sha: str
    subject: str
    author: str
    committed_at: str

    @property
    def short(self) -> str:
        return self.sha[:12]


class Source:
    """A full (non-shallow) bare cache of the remote under the state directory."""

    def __init__(self, url: str, branch: str, cache: Path, timeout: int = 120) -> None:
        self.url = url
        self.branch = branch
        self.timeout = timeout
        if (cache / "HEAD").exists():
            self.repo = git.Repo(cache)
        else:
            cache.mkdir(parents=True, exist_ok=True)
            self.repo = git.Repo.init(cache, bare=True)
        with self.repo.config_writer() as config:
            for key, value in HARDENING.items():
                section, option = key.rsplit(".", 1)
                config.set_value(section, option, value)
            config.set_value('remote "origin"', "url", url)
            config.set_value('remote "origin"', "fetch", "+refs/heads/*:refs/remotes/origin/*")
        self.repo.git.update_environment(**GIT_ENV)

    def fetch(self) -> Revision:
        """Fetch every branch from the remote and return the watched branch's head."""
        try:
            self.repo.git.fetch("--no-recurse-submodules", "--prune", "--no-tags", "origin",
                                kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            raise ControllerError(Reason.FETCH_FAILED,
                                  f"cannot fetch {self.url}: {first_line(str(exc.stderr)) or exc}") from exc
        return self.head()

    def head(self) -> Revision:
        """The watched branch's head as last fetched."""
        try:
            return self._revision(f"refs/remotes/origin/{self.branch}")
        except ControllerError:
            raise ControllerError(Reason.REVISION_NOT_FOUND,
                                  f"branch {self.branch!r} not found in {self.url}") from None

    def resolve(self, rev: str) -> Revision:
        """A commit of the cache by SHA (or a remote branch name, for previews)."""
        for candidate in (rev, f"refs/remotes/origin/{rev}"):
            try:
                return self._revision(candidate)
            except ControllerError:
                continue
        raise ControllerError(Reason.REVISION_NOT_FOUND,
                              f"revision {rev!r} not found in {self.url} (fetched all branches)")

    def descends(self, ancestor: str, sha: str) -> bool:
        """Whether ``sha`` is ``ancestor`` or a descendant of it (a fast-forward)."""
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, sha)
        except git.GitCommandError:
            return False
        return True

    def extract(self, sha: str, destination: Path) -> None:
        """Write exactly the tree of ``sha`` into ``destination``: no untracked files, no leftovers."""
        process = self.repo.git.archive("--format=tar", sha, as_process=True)
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                # the "data" filter refuses absolute paths and links that leave the checkout
                archive.extractall(destination, filter="data")
        except tarfile.FilterError as exc:
            raise ControllerError(Reason.SNAPSHOT_FAILED,
                                  f"refusing revision {sha[:12]}: {exc}") from exc
        finally:
            process.wait()

    def _revision(self, rev: str) -> Revision:
        try:
            # rev-parse --verify checks existence; GitPython's commit() is lazy for full SHAs
            sha = self.repo.git.rev_parse("--verify", "--quiet", f"{rev}^{{commit}}")
            commit = self.repo.commit(sha)
        except (git.BadName, ValueError, git.GitCommandError) as exc:
            raise ControllerError(Reason.REVISION_NOT_FOUND, f"revision {rev!r} not found") from exc
        when = datetime.fromtimestamp(commit.committed_date, tz=UTC).isoformat()
        subject = str(commit.message).splitlines()[0] if commit.message else ""
        return Revision(commit.hexsha, subject, str(commit.author.name), when)
