"""A reviewed preview that a later sync applies only if it still holds: terraform's plan and apply.

``check --save-plan FILE`` writes the revision it checked and, per app, each change the check found: the
host, the task and a digest of its masked diff (no diff text, so no secret, even masked). ``sync --plan
FILE`` applies only that revision, and only the apps whose check, run again just before the apply, finds
exactly those changes: a hand edit since the review, a host that came back, a template that renders
otherwise, and nothing is applied; the run says what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from controller.clock import now
from controller.errors import ControllerError
from controller.verify.drift import Report
from controller.vocabulary import Reason, TaskStatus

FORMAT = "gitops-controller plan 1"

Change = tuple[str, str, str]  # host, task, sha256 of the masked diff


def changes(report: Report) -> frozenset[Change]:
    """What a check found to change, as a plan keeps it."""
    return frozenset((t.host, t.task, hashlib.sha256(t.diff.encode()).hexdigest())
                     for t in report.tasks if t.status is TaskStatus.CHANGED)


@dataclass(frozen=True)
class PlanFile:
    """The revision a preview checked and, per app, the changes it found."""

    revision: str
    created: str
    apps: dict[str, frozenset[Change]]

    @classmethod
    def of(cls, revision: str, checks: dict[str, Report]) -> PlanFile:
        return cls(revision, now(), {app: changes(report) for app, report in checks.items()})

    def write(self, path: Path) -> None:
        document = {"format": FORMAT, "revision": self.revision, "created": self.created,
                    "apps": {app: sorted(list(c) for c in found) for app, found in sorted(self.apps.items())}}
        try:
            path.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"--save-plan {path}: cannot write it: {exc.strerror}") \
                from None

    @classmethod
    def read(cls, path: Path) -> PlanFile:
        """The plan in ``path``; one line naming the file if it is not one."""
        try:
            document = json.loads(path.read_text())
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, not {FORMAT!r}")
            return cls(str(document["revision"]), str(document["created"]),
                       {app: frozenset((str(h), str(t), str(d)) for h, t, d in found)
                        for app, found in document["apps"].items()})
        except OSError as exc:
            raise ControllerError(Reason.CONFIG_INVALID, f"--plan {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ControllerError(Reason.CONFIG_INVALID,
                                  f"--plan {path}: not a plan that check --save-plan wrote ({exc})") from None

    def differs(self, app: str, checked: Report) -> str | None:
        """What the check just made finds otherwise than the plan for ``app`` (None: the same changes)."""
        if app not in self.apps:
            return f"app {app} is not in the plan"
        planned, found = self.apps[app], changes(checked)
        if planned == found:
            return None
        said = [f"{host} would now change {task!r}" for host, task, _ in sorted(found - planned)]
        said += [f"{host} would no longer change {task!r}" for host, task, _ in sorted(planned - found)]
        return "; ".join(said[:4]) + (f" (and {len(said) - 4} more)" if len(said) > 4 else "")
