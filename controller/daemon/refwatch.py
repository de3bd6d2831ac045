"""Pushes into a bare repository on this host (a bastion that hosts Git), seen at once through watchdog."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from controller.errors import ControllerError
from controller.process import answer
from controller.vocabulary import Reason


def local_bare_repository(url: str) -> Path | None:
    """The repository's directory when ``url`` names a bare repository on this host, else None."""
    if url.startswith("file://"):
        url = urlsplit(url).path
    elif "://" in url or not url.startswith("/"):
        return None
    path = Path(url)
    if (path / "HEAD").is_file() and (path / "refs").is_dir() and (path / "objects").is_dir():
        return path
    return None


class RefWatcher(FileSystemEventHandler):
    """Calls ``on_push`` with the branch's new head whenever its ref (loose or packed) is written."""

    def __init__(self, repository: Path, branch: str, on_push: Callable[[str | None], None]) -> None:
        self.repository = repository
        self.branch = branch
        self.targets = {str(repository / "refs" / "heads" / branch), str(repository / "packed-refs")}
        self.on_push = on_push
        self.observer = Observer()

    def start(self) -> None:
        # git updates a ref by writing REF.lock and renaming it over REF: watch the directories
        self.observer.schedule(self, str(self.repository / "refs" / "heads"), recursive=True)
        self.observer.schedule(self, str(self.repository), recursive=False)
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if paths & self.targets and event.event_type in ("created", "modified", "moved", "closed"):
            self.on_push(self.head())

    def head(self) -> str | None:
        """The branch's head in the repository now (None if it cannot be read: the push is taken as news)."""
        argv = ["git", f"--git-dir={self.repository}", "rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        try:
            code, out = answer(argv, answers=(0, 1), reason=Reason.FETCH_FAILED, env=env, timeout=10,
                               what=f"reading {self.branch} in {self.repository}")
        except ControllerError:
            return None
        return out.strip() if code == 0 else None
