"""Health: what an app's health checks found on each host, a dimension of its own beside its sync state.

The checks run on the host in the probe's one ssh round trip (``verify.probe``); here is what their answers mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from controller.source.apps import HealthCheck
from controller.vocabulary import Health


@dataclass(frozen=True)
class CheckResult:
    """One health check on one host: passed or not, what it said last, after how many attempts."""

    check: str     # as the app names it: ``tcp 8443``
    passed: bool
    said: str      # ``exit status 3: inactive``, ``HTTP 503``, ``Connection refused``
    attempts: int


@dataclass(frozen=True)
class HostHealth:
    """A host's health now: every check passed, one failed, or the host could not be asked (``why``)."""

    host: str
    health: Health
    checks: tuple[CheckResult, ...] = ()
    why: str = ""  # unknown: why the checks did not run

    @classmethod
    def of(cls, host: str, checks: tuple[CheckResult, ...], error: str = "") -> HostHealth:
        """The health the checks' results (or the error of asking the host) amount to."""
        if error:
            return cls(host, Health.UNKNOWN, (), error)
        return cls(host, Health.HEALTHY if all(c.passed for c in checks) else Health.UNHEALTHY, checks)

    @property
    def detail(self) -> str:
        """What is wrong, in one line: each failed check and what it said (empty when healthy)."""
        if self.health is Health.UNKNOWN:
            return self.why
        return "; ".join(f"{c.check}: {c.said}" + (f" ({c.attempts} attempts)" if c.attempts > 1 else "")
                         for c in self.checks if not c.passed)

    def redacted(self, mask: Callable[[str], str]) -> HostHealth:
        """The same with ``mask`` over what the checks said (a command may print what it reads), then shortened:
        the host sends a whole line, so that no secret is cut in two before it is masked."""
        return replace(self, checks=tuple(replace(c, said=_shortened(mask(c.said))) for c in self.checks),
                       why=mask(self.why))

    def withheld(self) -> HostHealth:
        """The same with what failed commands printed left out (no secret was known to mask it with)."""
        return replace(self, checks=tuple(
            replace(c, said=c.said.partition(": ")[0] + " (output withheld: the secrets to mask it could not be "
                    "decrypted)") if c.check.startswith("command") and not c.passed else c for c in self.checks))


def _shortened(text: str, most: int = 300) -> str:
    return text if len(text) <= most else "..." + text[-most:]


def budget(checks: Sequence[HealthCheck]) -> float:
    """The longest the checks can take on one host: every attempt timing out, with the delays between them."""
    return sum((check.retries + 1) * check.timeout + check.retries * check.delay for check in checks)
