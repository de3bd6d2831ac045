"""Prometheus metrics, read from the state store at every scrape: one truth for `watch`, `serve`, cron and the CLI.

Nothing is kept in memory, so a `check` from cron, a suspend from the dashboard and a restart of the daemon all
show at the next scrape as `controller status` shows them. Counters are counts of recorded runs, which are only
ever added to, so they stay monotonic across restarts. Names and labels are a contract once released
(docs/deploy.md); previews never count, as they never become an app's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from controller.clock import parse_time
from controller.state.migrations import DURATION_BUCKETS
from controller.state.records import AppStatus
from controller.state.store import Store
from controller.vocabulary import Health, HostState, Kind, Outcome


class StoreCollector:
    """A prometheus_client collector over the state store that ``open_store`` opens."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self.open_store = open_store

    def collect(self) -> Iterator[Metric]:
        with self.open_store() as store:
            tallies = store.run_tallies()
            changes = store.host_changes()
            status = store.status()
        runs = CounterMetricFamily("controller_runs", "Runs per app, kind (check, sync, verify) and outcome.",
                                   labels=["app", "mode", "outcome"])
        durations: dict[tuple[str, str], tuple[int, float, list[int]]] = {}
        good: dict[str, str] = {}  # when a sync last ended converged or in sync
        for tally in tallies:
            if tally.kind is Kind.SYNC and tally.outcome in (Outcome.CONVERGED, Outcome.IN_SYNC):
                good[tally.app] = max(good.get(tally.app, ""), tally.last_finished)
            runs.add_metric([tally.app, tally.kind, tally.outcome], tally.runs)
            key = (tally.app, tally.kind)
            count, seconds, buckets = durations.get(key, (0, 0.0, [0] * len(DURATION_BUCKETS)))
            durations[key] = (count + tally.runs, seconds + tally.seconds,
                              [a + b for a, b in zip(buckets, tally.buckets, strict=True)])
        yield runs
        histogram = HistogramMetricFamily("controller_run_duration_seconds", "Duration of one app's run.",
                                          labels=["app", "mode"])
        for (app, mode), (count, seconds, buckets) in sorted(durations.items()):
            histogram.add_metric([app, mode], [*((str(float(b)), n) for b, n in zip(DURATION_BUCKETS, buckets,
                                                                                       strict=True)),
                                               ("+Inf", count)], seconds)
        yield histogram
        rolled_out = CounterMetricFamily("controller_hosts_rolled_out", "Hosts syncs rolled a new revision out to.",
                                         labels=["app"])
        corrected = CounterMetricFamily("controller_drift_corrected_hosts", "Hosts syncs corrected drift on (at a "
                                        "revision they already had).", labels=["app"])
        for change in changes:
            rolled_out.add_metric([change.app], change.rolled_out)
            corrected.add_metric([change.app], change.corrected)
        yield from (rolled_out, corrected)
        yield from _app_gauges(status, good)


def _app_gauges(status: list[AppStatus], good: dict[str, str]) -> Iterator[Metric]:
    """Per app (and host), the gauges `controller status` has the facts of."""
    drifted = GaugeMetricFamily("controller_drifted_hosts", "Hosts left differing from Git by the last check or "
                                "sync.", labels=["app"])
    host = GaugeMetricFamily("controller_host_drifted", "1 when the last check or sync left the host differing "
                             "from Git.", labels=["app", "host"])
    behind = GaugeMetricFamily("controller_hosts_behind", "Hosts of the app not at its applied revision (missed a "
                               "rollout).", labels=["app"])
    last = GaugeMetricFamily("controller_last_successful_sync_timestamp_seconds",
                             "When a sync last left the app converged or in sync (Unix time).", labels=["app"])
    revision = InfoMetricFamily("controller_applied_revision", "The revision last applied to the app.",
                                labels=["app"])
    suspended = GaugeMetricFamily("controller_suspended", "1 when the app is suspended.", labels=["app"])
    healthy = GaugeMetricFamily("controller_host_healthy", "1 when the app's health checks (gitops.yml health:) last "
                                "passed on the host, 0 when one failed; absent while unknown.", labels=["app", "host"])
    for row in status:
        app = row.app
        for entry in row.hosts:
            host.add_metric([app, entry.host], 1 if entry.state is HostState.DRIFTED else 0)
            if entry.health in (Health.HEALTHY, Health.UNHEALTHY):
                healthy.add_metric([app, entry.host], 1 if entry.health is Health.HEALTHY else 0)
        drifted.add_metric([app], sum(1 for entry in row.hosts if entry.state is HostState.DRIFTED))
        # only an app with an applied revision can have hosts behind it (a detect app never applied has none)
        behind.add_metric([app], len(row.hosts) - row.hosts_at_revision if row.applied_revision else 0)
        if app in good:
            last.add_metric([app], parse_time(good[app]).timestamp())
        if row.applied_revision:
            revision.add_metric([app], {"revision": row.applied_revision})
        suspended.add_metric([app], 1 if row.suspended else 0)
    yield from (drifted, host, behind, last, revision, suspended, healthy)


class Metrics:
    """The /metrics exposition of one state store."""

    def __init__(self, open_store: Callable[[], Store]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(open_store))

    def render(self) -> bytes:
        """The Prometheus text format, read from the store now (blocking: call it off the event loop)."""
        return generate_latest(self.registry)
