"""One TrainingJob: loss, learning rate, throughput, gradients, checkpoints, recoveries.

Trainer series come from rank 0's /metrics; goodput and gang restarts from the
operator's per-job series (same namespace and trainingjob labels)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from kubetrain_dashboards.panels import base_dashboard, graph, label_variable, query, single

UID = "kubetrain-job"
# Every trainer series carries the TrainingJob's namespace and name (constant labels).
SEL = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
BY = "namespace, trainingjob"


def m(name: str) -> str:
    """A trainer series of the selected jobs."""
    return f"{name}{{{SEL}}}"


def quantile(q: str, histogram: str) -> str:
    rate = f"rate({m(histogram + '_bucket')}[$__rate_interval])"
    return f"histogram_quantile({q}, sum by ({BY}, le) ({rate}))"


def job_view() -> dashboard.Dashboard:
    return (
        base_dashboard(
            "kubetrain / TrainingJob",
            UID,
            "Loss, learning rate, throughput, gradients, checkpoints, rollbacks of TrainingJobs.",
        )
        .with_variable(
            label_variable(
                "namespace",
                "Namespace",
                "label_values(kubetrain_step, namespace)",
                include_all=True,
            )
        )
        .with_variable(
            label_variable(
                "trainingjob",
                "TrainingJob",
                'label_values(kubetrain_step{namespace=~"$namespace"}, trainingjob)',
                include_all=True,
            )
        )
        .with_row(dashboard.Row("Progress"))
        .with_panel(
            single(
                "Step",
                "Optimizer steps completed.",
                "short",
                query(f"max by ({BY}) (kubetrain_step{{{SEL}}})", "{{trainingjob}}"),
            )
        )
        .with_panel(
            single(
                "Progress",
                "Steps completed out of the total the run will take.",
                "percentunit",
                query(
                    f"max by ({BY}) ({m('kubetrain_step')})"
                    f" / max by ({BY}) ({m('kubetrain_total_steps')} > 0)",
                    "{{trainingjob}}",
                ),
            )
        )
        .with_panel(
            single(
                "Goodput",
                "Share of the job's wall time spent on training steps that were kept: restarts,"
                " rollbacks and redone steps count against it (status.goodputPercent).",
                "percent",
                query(
                    f"max by ({BY}) ({m('kubetrain_operator_job_goodput_percent')})",
                    "{{trainingjob}}",
                ),
            )
        )
        .with_panel(
            single(
                "Gang restarts",
                "Times the operator restarted the job's pods, all causes (status.restarts.total).",
                "short",
                query(
                    f"sum by ({BY}) ({m('kubetrain_operator_job_restarts')})",
                    "{{trainingjob}}",
                ),
            )
        )
        .with_panel(
            single(
                "Rollbacks",
                "In-process restores of the last good state in the range.",
                "short",
                query(
                    f"sum by ({BY}) (increase(kubetrain_rollbacks_total{{{SEL}}}[$__range]))",
                    "{{trainingjob}}",
                ),
            )
        )
        .with_panel(
            single(
                "World size",
                "Processes training now: below the gang's full size while an elastic gang"
                " trains on without a lost pod (spec.elastic).",
                "short",
                query(f"max by ({BY}) ({m('kubetrain_world_size')})", "{{trainingjob}}"),
            )
        )
        .with_row(dashboard.Row("Optimization"))
        .with_panel(
            graph(
                "Loss",
                "Training loss of the last logged step, its moving average, and validation loss.",
                "short",
                query(m("kubetrain_loss"), "{{trainingjob}} train"),
                query(m("kubetrain_loss_ema"), "{{trainingjob}} train (EMA)"),
                query(m("kubetrain_val_loss"), "{{trainingjob}} validation"),
            )
        )
        .with_panel(
            graph(
                "Active stacks",
                "Stacks the model runs, one more per stage of a progressive run"
                " (training.strategy progressive); empty for the other strategies.",
                "short",
                query(m("kubetrain_active_stacks"), "{{trainingjob}}"),
            )
        )
        .with_panel(
            graph(
                "Learning rate",
                "Learning rate of the last step.",
                "short",
                query(m("kubetrain_learning_rate"), "{{trainingjob}}"),
            )
        )
        .with_panel(
            graph(
                "Gradient norm",
                "Global gradient norm before clipping.",
                "short",
                query(m("kubetrain_grad_norm"), "{{trainingjob}}"),
            )
        )
        .with_panel(
            graph(
                "Throughput",
                "Tokens per second over all ranks.",
                "short",
                query(m("kubetrain_tokens_per_second"), "{{trainingjob}} tokens/s"),
            )
        )
        .with_row(dashboard.Row("Checkpoints and recovery"))
        .with_panel(
            graph(
                "Checkpoint age",
                "Seconds since the newest committed checkpoint.",
                "s",
                query(
                    f"time() - (kubetrain_last_checkpoint_timestamp_seconds{{{SEL}}} > 0)",
                    "{{trainingjob}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Checkpoint save duration",
                "p95 of the training-loop stall per checkpoint and of the (background) upload"
                " and commit.",
                "s",
                query(
                    quantile("0.95", "kubetrain_checkpoint_save_seconds"), "{{trainingjob}} stall"
                ),
                query(
                    quantile("0.95", "kubetrain_checkpoint_upload_seconds"),
                    "{{trainingjob}} upload",
                ),
            )
        )
        .with_panel(
            graph(
                "Checkpoint steps",
                "Newest committed checkpoint step and newest good one (the rollback target).",
                "short",
                query(m("kubetrain_last_checkpoint_step"), "{{trainingjob}} committed"),
                query(m("kubetrain_good_checkpoint_step"), "{{trainingjob}} good"),
            )
        )
        .with_panel(
            graph(
                "Gang restarts by cause",
                "The operator's restarts of the job's pods: nodeFailure, nan (rollback to an"
                " older checkpoint), error, hang.",
                "short",
                query(
                    f"sum by ({BY}, cause) ({m('kubetrain_operator_job_restarts')})",
                    "{{trainingjob}} {{cause}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Bad steps and rollbacks",
                "NaN/spike events by action, rollbacks and failed checkpoints per 5 minutes.",
                "short",
                query(
                    f"sum by ({BY}, action) (increase(kubetrain_nan_events_total{{{SEL}}}[5m]))",
                    "{{trainingjob}} {{action}}",
                ),
                query(
                    f"sum by ({BY}) (increase(kubetrain_rollbacks_total{{{SEL}}}[5m]))",
                    "{{trainingjob}} rollbacks",
                ),
                query(
                    f"sum by ({BY}) (increase(kubetrain_checkpoint_failures_total{{{SEL}}}[5m]))",
                    "{{trainingjob}} failed checkpoints",
                ),
            )
        )
    )
