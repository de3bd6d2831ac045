"""Prometheus metrics of the watch daemon, in their own registry."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from controller.drift import host_states
from controller.outcomes import ExitCode, Kind, Outcome
from controller.results import Result


class Metrics:
    """Counters and gauges fed from each cycle's result; names are a contract once released.

    Only checks and syncs count: a preview never becomes an app's state, so never its metrics.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("controller_runs", "Runs per app, kind (check, sync) and outcome.",
                            ["app", "mode", "outcome"], registry=self.registry)
        self.drifted = Gauge("controller_drifted_hosts", "Hosts left differing from Git by the last check or sync.",
                             ["app"], registry=self.registry)
        self.host_drifted = Gauge("controller_host_drifted", "1 when the last check or sync left the host differing "
                                  "from Git.",
                                  ["app", "host"], registry=self.registry)
        self.behind = Gauge("controller_hosts_behind", "Hosts of the app not at the revision last reconciled.",
                            ["app"], registry=self.registry)
        self.last_sync = Gauge("controller_last_successful_sync_timestamp_seconds",
                               "When a sync last left the app converged or in sync (Unix time).", ["app"],
                               registry=self.registry)
        self.duration = Histogram("controller_run_duration_seconds", "Duration of one app's run.",
                                  ["app", "mode"], registry=self.registry,
                                  buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.revision = Info("controller_applied_revision", "The revision last applied to the app.", ["app"],
                             registry=self.registry)
        self.suspended = Gauge("controller_suspended", "1 when the app is suspended.", ["app"],
                               registry=self.registry)
        self._hosts: dict[str, set[str]] = {}

    def restore(self, status: list[dict[str, Any]]) -> None:
        """Start from what the state store knows, so a restart does not reset the gauges."""
        for row in status:
            app = str(row["app"])
            if row["applied_revision"]:
                self.revision.labels(app=app).info({"revision": str(row["applied_revision"])})
            self.suspended.labels(app=app).set(1 if row["suspended"] else 0)
            self.behind.labels(app=app).set(row["hosts_total"] - row["hosts_at_revision"])
            self._set_hosts(app, {h["host"]: h["state"] == "drifted" for h in row["hosts"]})

    def observe(self, result: Result) -> None:
        """Count a cycle's app runs and update the per-app and per-host gauges."""
        if result.kind is Kind.PREVIEW:
            return
        for app in result.apps:
            self.suspended.labels(app=app.app).set(1 if app.outcome is Outcome.SUSPENDED else 0)
            self._hosts.setdefault(app.app, set())
            if app.outcome is Outcome.SUSPENDED or app.run_id is None:
                continue
            self.runs.labels(app=app.app, mode=app.kind.value, outcome=app.outcome.value).inc()
            self.duration.labels(app=app.app, mode=app.kind.value).observe(app.seconds)
            if app.check is not None:
                states = host_states(app.check, app.applied)
                self.drifted.labels(app=app.app).set(sum(1 for s in states.values() if s == "drifted"))
                self._set_hosts(app.app, {host: state == "drifted" for host, state in states.items()})
                self.behind.labels(app=app.app).set(app.behind)
            if app.applied is not None and app.revision:
                self.revision.labels(app=app.app).info({"revision": app.revision})
            if app.kind is Kind.SYNC and app.exit_code() is ExitCode.OK:
                self.last_sync.labels(app=app.app).set_to_current_time()

    def keep_only(self, active: set[str]) -> None:
        """Drop every series of apps no longer reconciled (retired from gitops.yml)."""
        for app in sorted(set(self._hosts) - active):
            for metric in (self.drifted, self.behind, self.last_sync, self.revision, self.suspended):
                with contextlib.suppress(KeyError):
                    metric.remove(app)
            self._set_hosts(app, {})
            del self._hosts[app]

    def _set_hosts(self, app: str, drifted: dict[str, bool]) -> None:
        for gone in self._hosts.get(app, set()) - set(drifted):
            self.host_drifted.remove(app, gone)
        for host, value in drifted.items():
            self.host_drifted.labels(app=app, host=host).set(1 if value else 0)
        self._hosts[app] = set(drifted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
