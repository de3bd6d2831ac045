"""Prometheus metrics of the watch daemon, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from controller.outcomes import Outcome
from controller.reconcile import Result

APPLIED = (Outcome.CONVERGED, Outcome.IN_SYNC)


class Metrics:
    """Counters and gauges fed from each cycle's result; names are a contract once released."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("controller_runs", "Runs per app, mode and outcome.", ["app", "mode", "outcome"],
                            registry=self.registry)
        self.drifted = Gauge("controller_drifted_hosts", "Hosts that differed from Git at the last check.",
                             ["app"], registry=self.registry)
        self.last_sync = Gauge("controller_last_successful_sync_timestamp_seconds",
                               "When the app was last left converged or in sync by a sync (Unix time).", ["app"],
                               registry=self.registry)
        self.duration = Histogram("controller_run_duration_seconds", "Duration of one app's run.",
                                  ["app", "mode"], registry=self.registry,
                                  buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.revision = Info("controller_applied_revision", "The revision last applied to the app.", ["app"],
                             registry=self.registry)
        self.suspended = Gauge("controller_suspended", "1 when the app is suspended.", ["app"],
                               registry=self.registry)

    def restore(self, status: list[dict[str, object]]) -> None:
        """Start from what the state store knows, so a restart does not reset the gauges."""
        for row in status:
            app = str(row["app"])
            if row["applied_revision"]:
                self.revision.labels(app=app).info({"revision": str(row["applied_revision"])})
            self.suspended.labels(app=app).set(1 if row["suspended"] else 0)

    def observe(self, result: Result) -> None:
        """Count a cycle's app runs and update the per-app gauges."""
        for app in result.apps:
            self.suspended.labels(app=app.app).set(1 if app.outcome is Outcome.SUSPENDED else 0)
            if app.outcome is Outcome.SUSPENDED:
                continue
            self.runs.labels(app=app.app, mode=result.request.mode, outcome=app.outcome.value).inc()
            self.duration.labels(app=app.app, mode=result.request.mode).observe(app.seconds)
            if app.check is not None:
                self.drifted.labels(app=app.app).set(len(app.check.with_status("changed")))
            if result.request.applies and app.outcome in APPLIED and app.revision:
                self.last_sync.labels(app=app.app).set_to_current_time()
                self.revision.labels(app=app.app).info({"revision": app.revision})

    def render(self) -> bytes:
        return generate_latest(self.registry)
