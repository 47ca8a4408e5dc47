"""Operator overview: how many jobs in which state, why gangs restart, how fast they recover."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from kubetrain_dashboards.panels import base_dashboard, graph, query, single

UID = "kubetrain-operator"


def _quantile(q: str, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))"


def operator_overview() -> dashboard.Dashboard:
    return (
        base_dashboard(
            "kubetrain / Operator",
            UID,
            "TrainingJobs by state, gang restarts by cause, recovery and reconcile latency.",
        )
        .with_row(dashboard.Row("Jobs"))
        .with_panel(
            single(
                "Running jobs",
                "TrainingJobs whose gang is running.",
                "short",
                query('sum(kubetrain_operator_jobs{state="Running"})'),
            )
        )
        .with_panel(
            single(
                "Restarting jobs",
                "TrainingJobs between a gang restart decision and the next attempt running.",
                "short",
                query('sum(kubetrain_operator_jobs{state="Restarting"})'),
            )
        )
        .with_panel(
            single(
                "Failed jobs",
                "TrainingJobs that failed and are not yet deleted.",
                "short",
                query('sum(kubetrain_operator_jobs{state="Failed"})'),
            )
        )
        .with_panel(
            single(
                "Gang restarts",
                "Gang restarts of the TrainingJobs that exist, all causes (their status.restarts).",
                "short",
                query("sum(kubetrain_operator_job_restarts)"),
            )
        )
        .with_panel(
            graph(
                "Jobs by state",
                "Number of TrainingJobs in each state.",
                "short",
                query("sum by (state) (kubetrain_operator_jobs)", "{{state}}"),
            )
        )
        .with_row(dashboard.Row("Recovery"))
        .with_panel(
            graph(
                "Restarts by cause",
                "Gang restarts of the TrainingJobs that exist, by cause (nodeFailure, nan, error,"
                " hang); a step up is a restart.",
                "short",
                query("sum by (cause) (kubetrain_operator_job_restarts)", "{{cause}}"),
            )
        )
        .with_panel(
            graph(
                "Time to recover",
                "From a gang-restart decision to all pods of the next attempt running.",
                "s",
                query(_quantile("0.5", "kubetrain_operator_recovery_seconds"), "p50"),
                query(_quantile("0.95", "kubetrain_operator_recovery_seconds"), "p95"),
            )
        )
        .with_panel(
            graph(
                "Time to running",
                "From TrainingJob creation to all worker pods running.",
                "s",
                query(_quantile("0.5", "kubetrain_operator_time_to_running_seconds"), "p50"),
                query(_quantile("0.95", "kubetrain_operator_time_to_running_seconds"), "p95"),
            )
        )
        .with_row(dashboard.Row("Control loop"))
        .with_panel(
            graph(
                "Reconcile latency",
                "Time of one reconcile (observe, decide, act).",
                "s",
                query(_quantile("0.5", "kubetrain_operator_reconcile_duration_seconds"), "p50"),
                query(_quantile("0.99", "kubetrain_operator_reconcile_duration_seconds"), "p99"),
            )
        )
        .with_panel(
            graph(
                "Reconcile rate",
                "Reconciles per second (events, timers and spec changes).",
                "ops",
                query(
                    "sum(rate(kubetrain_operator_reconcile_duration_seconds_count[$__rate_interval]))",
                    "reconciles/s",
                ),
            )
        )
    )
