"""A rollout in batches (gitops.yml ``rollout:``): the apply runs batch after batch over the hosts the plan chose,
each batch healthy before the next starts. A batch whose apply or health checks fail halts the rollout: the hosts
after it are not touched, and with ``on_failure: rollback`` the failed ones are put back to the revision each
had before. An app without ``rollout:`` is applied as always: every host that needs it at once, no gate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controller.source.apps import App
from controller.verify.drift import Report
from controller.verify.health import HostHealth
from controller.vocabulary import Health, OnFailure, RolloutStep


@dataclass
class Staged:
    """What a rollout did: the apply of every batch it ran, and where it halted and why."""

    batches: list[list[str]]
    applied: Report = field(default_factory=lambda: Report((), ()))
    done: int = 0                                             # batches applied
    current: int = 0                                          # the batch being worked on (while it runs)
    step: RolloutStep = RolloutStep.APPLYING                  # what is being done to it
    failed: dict[str, str] = field(default_factory=dict)      # host -> what failed: its apply or a health check
    untouched: list[str] = field(default_factory=list)        # the hosts of the batches after a halt
    rolled_back: dict[str, str] = field(default_factory=dict)  # host -> the revision it was put back to
    kept: dict[str, str] = field(default_factory=dict)        # host -> why it could not be put back
    mixed: set[str] = field(default_factory=set)              # hosts whose rollback failed part way

    @property
    def halted(self) -> bool:
        return bool(self.failed)

    @property
    def detail(self) -> str:
        """Which hosts failed and how, in one line."""
        return "; ".join(f"{host}: {why}" for host, why in sorted(self.failed.items()))

    def story(self) -> str:
        """The rollout as the run's message tells it (nothing to tell for one batch that went through)."""
        count = len(self.batches)
        if not self.halted:
            return f"rolled out in {count} batches" if count > 1 else ""
        parts = [f"halted at batch {self.done} of {count}: {self.detail}"]
        if self.rolled_back:
            back = sorted(self.rolled_back.items())
            parts.append("rolled back " + ", ".join(f"{host} to {sha[:12]}" for host, sha in back))
        parts.extend(f"{host} not rolled back: {why}" for host, why in sorted(self.kept.items()))
        if self.untouched:
            parts.append(f"not touched: {', '.join(self.untouched)}")
        return "; ".join(parts)

    def summary(self) -> dict[str, object]:
        """What ``show`` and ``history --json`` keep of the rollout."""
        return {"batches": self.batches, "done": self.done, "failed": self.failed, "untouched": self.untouched,
                "rolled_back": self.rolled_back, "not_rolled_back": self.kept}

    def now(self) -> dict[str, object]:
        """The rollout as it stands while it runs (the dashboard's): the summary, and what is being done."""
        return {**self.summary(), "current": self.current, "step": self.step}


def roll_out(app: App, hosts: list[str], limit: str | None, apply: Callable[[str | None], Report],
             health: Callable[[list[str]], Mapping[str, HostHealth]],
             rollback: Callable[[list[str], Staged], None], tell: Callable[[Staged, str], None]) -> Staged:
    """Apply ``hosts`` (``limit``: Ansible's for all of them at once) batch by batch as ``app.rollout`` says;
    ``health`` runs the app's checks on a batch, ``rollback`` puts hosts back, ``tell`` hears each step of a
    rollout of more than one batch (and a last, with no message, when it is done)."""
    steps = app.rollout
    if steps is None:
        return Staged([hosts], apply(limit), done=1)
    staged = Staged(steps.split(hosts))
    count = len(staged.batches)

    def say(message: str) -> None:
        if count > 1:
            tell(staged, message)

    reports: list[Report] = []
    for number, batch in enumerate(staged.batches, 1):
        staged.current, staged.step = number, RolloutStep.APPLYING
        say(f"{app.name}: batch {number} of {count}: {', '.join(batch)}")
        report = apply(limit if count == 1 else ",".join(batch))
        reports.append(report)
        staged.done = number
        failed = {h.host: f"apply {h.status}" for h in report.hosts if h.status.broken}
        if app.health:
            staged.step = RolloutStep.CHECKING
            say("")  # the checks say so themselves
            found = health([h.host for h in report.hosts if h.host not in failed])
            failed.update({host: f"health {h.health}: {h.detail}" for host, h in found.items()
                           if h.health is not Health.HEALTHY})
        if not failed:
            say(f"{app.name}: batch {number} of {count} done: {len(report.hosts)} host(s) applied"
                + (", healthy" if app.health else ""))
            continue
        staged.failed = failed
        staged.untouched = [host for later in staged.batches[number:] for host in later]
        halts = f"{app.name}: batch {number} of {count} failed, the rollout halts: {staged.detail}"
        if steps.on_failure is OnFailure.ROLLBACK:  # the whole batch, as it ran before
            staged.step = RolloutStep.ROLLING_BACK
            say(f"{halts}; rolling the batch back")
            rollback(sorted(h.host for h in report.hosts), staged)
        else:
            say(halts)
        break
    staged.step = RolloutStep.DONE
    say("")
    staged.applied = Report(tuple(h for r in reports for h in r.hosts), tuple(t for r in reports for t in r.tasks))
    return staged
