"""metrics.jsonl, the Prometheus registry, the real HTTP server, and the console output."""

from __future__ import annotations

import io
import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from kubetrain_core.config import MetricsConfig
from kubetrain_trainer.metrics import (
    EvalRecord,
    MetricsLogger,
    MetricsServer,
    ProgressReporter,
    Sink,
    StepRecord,
    TensorBoardWriter,
    TrainerMetrics,
    build_sinks,
    perplexity,
    read_metrics,
    summary_table,
)
from kubetrain_trainer.metrics.prometheus import job_labels
from kubetrain_trainer.metrics.records import Sinks

TRAIN: dict[str, Any] = {
    "epoch": 0.5,
    "loss": 2.0,
    "loss_ema": 2.5,
    "lr": 3e-4,
    "grad_norm": 1.5,
    "tokens_per_second": 1000.0,
    "samples_per_second": 8.0,
}


def _record(step: int, **fields: Any) -> StepRecord:
    return StepRecord(step=step, **{**TRAIN, **fields})


# --- metrics.jsonl -----------------------------------------------------------------------------


def test_jsonl_records_parse_with_kinds_and_perplexity(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as log:
        log.step(_record(10))
        log.evaluation(EvalRecord("val", 10, 1.0))
        log.evaluation(EvalRecord("test", 20, 0.5))
        log.event("nan_skip", step=11, loss=float("nan"), reason="non-finite loss")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON, one object per line
    assert [r["kind"] for r in records] == ["train", "val", "test", "event"]
    train, val, test, event = records
    assert train["step"] == 10
    assert train["perplexity"] == pytest.approx(math.exp(2.0))
    assert set(TRAIN) <= set(train)
    assert isinstance(train["time"], float)
    assert val["val_perplexity"] == pytest.approx(math.e)
    assert test["test_perplexity"] == pytest.approx(math.exp(0.5))
    assert event["event"] == "nan_skip"
    assert event["loss"] is None  # NaN is not JSON; it is written as null
    assert "NaN" not in lines[3]


def test_jsonl_appends_across_instances(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path / "run") as first:
        first.evaluation(EvalRecord("val", 1, 3.0))
    with MetricsLogger(tmp_path / "run") as second:  # a resumed attempt
        second.evaluation(EvalRecord("val", 2, 2.0))
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_jsonl_lines_are_flushed_as_written(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    log.event("checkpoint", step=5, uri="file:///x")
    # Read while the logger is still open (as a crash would leave it).
    assert read_metrics(tmp_path / "metrics.jsonl", kind="event")[0]["uri"] == "file:///x"
    log.close()


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path / "r1", rank=1)
    log.step(_record(1))
    log.close()
    assert not log.active
    assert not (tmp_path / "r1").exists()
    disabled = MetricsLogger(tmp_path / "off", enabled=False)
    disabled.evaluation(EvalRecord("val", 1, 1.0))
    assert not (tmp_path / "off").exists()


def test_read_metrics_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "val", "step": 1}\n{"kind": "tr')
    assert read_metrics(path) == [{"kind": "val", "step": 1}]


def test_perplexity_overflow_is_infinite() -> None:
    assert perplexity(1.0) == pytest.approx(math.e)
    assert perplexity(1e6) == math.inf


# --- Prometheus --------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    matches = [
        v for (n, ls), v in _samples(text).items() if n == name and set(labels.items()) <= ls
    ]
    assert len(matches) == 1, f"{name} {labels}: {matches}"
    return matches[0]


def test_prometheus_text_after_updates() -> None:
    m = TrainerMetrics(labels={"trainingjob": "demo", "namespace": "team"})
    m.total_steps.set(100)
    m.step(_record(42))
    m.evaluation(EvalRecord("val", 42, 1.25))
    m.evaluation(EvalRecord("test", 42, 9.0))  # not a gauge of its own
    m.checkpoint_stalled(0.3)
    m.checkpoint_committed(40, upload_seconds=2.0, timestamp=1_700_000_000.0)
    m.checkpoint_good(30)
    m.nan_event("skip")
    m.nan_event("skip")
    m.nan_event("restore")
    m.rollbacks.inc()
    m.steps_skipped.inc(4)
    text = m.render().decode()

    assert _value(text, "kubetrain_step", trainingjob="demo", namespace="team") == 42
    assert _value(text, "kubetrain_total_steps") == 100
    assert _value(text, "kubetrain_epoch") == 0.5
    assert _value(text, "kubetrain_loss") == 2.0
    assert _value(text, "kubetrain_loss_ema") == 2.5
    assert _value(text, "kubetrain_learning_rate") == pytest.approx(3e-4)
    assert _value(text, "kubetrain_grad_norm") == 1.5
    assert _value(text, "kubetrain_tokens_per_second") == 1000
    assert _value(text, "kubetrain_samples_per_second") == 8
    assert _value(text, "kubetrain_val_loss") == 1.25
    assert _value(text, "kubetrain_last_checkpoint_step") == 40
    assert _value(text, "kubetrain_last_checkpoint_timestamp_seconds") == 1_700_000_000
    assert _value(text, "kubetrain_good_checkpoint_step") == 30
    assert _value(text, "kubetrain_checkpoint_save_seconds_count") == 1
    assert _value(text, "kubetrain_checkpoint_save_seconds_bucket", le="0.5") == 1
    assert _value(text, "kubetrain_checkpoint_save_seconds_bucket", le="0.25") == 0
    assert _value(text, "kubetrain_checkpoint_upload_seconds_count") == 1
    assert _value(text, "kubetrain_nan_events_total", action="skip") == 2
    assert _value(text, "kubetrain_nan_events_total", action="restore") == 1
    assert _value(text, "kubetrain_nan_events_total", action="abort") == 0  # exists from start
    assert _value(text, "kubetrain_rollbacks_total") == 1
    assert _value(text, "kubetrain_steps_skipped_total") == 4


def test_each_instance_has_its_own_registry_and_rejects_unknown_actions() -> None:
    a, b = TrainerMetrics(labels={}), TrainerMetrics(labels={})
    a.step_gauge.set(5)
    assert _value(b.render().decode(), "kubetrain_step") == 0
    with pytest.raises(ValueError, match="unknown NaN action"):
        a.nan_event("explode")


def test_labels_come_from_operator_env() -> None:
    env = {"KUBETRAIN_JOB_NAME": "demo", "KUBETRAIN_NAMESPACE": "team"}
    assert job_labels(env) == {"trainingjob": "demo", "namespace": "team"}
    assert job_labels({"KUBETRAIN_JOB_NAME": "demo"}) == {"trainingjob": "demo"}
    assert job_labels({}) == {}
    text = TrainerMetrics(labels={}).render().decode()
    assert "kubetrain_step 0.0" in text  # unlabelled series when run outside the operator


# --- HTTP server -------------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, dict[str, Any]]]:
    progress: dict[str, Any] = {"step": 0, "totalSteps": 100, "lastCheckpoint": None}
    server = MetricsServer(0, TrainerMetrics(labels={}), lambda: progress, host="127.0.0.1")
    with server:
        yield server, progress


def _get(server: MetricsServer, path: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_server_metrics_endpoint_reflects_updates(
    served: tuple[MetricsServer, dict[str, Any]],
) -> None:
    server, _ = served
    assert server.port != 0
    status, ctype, body = _get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert _value(body, "kubetrain_step") == 0
    server.metrics.step(_record(7))
    assert _value(_get(server, "/metrics")[2], "kubetrain_step") == 7
    # OpenMetrics when Prometheus asks for it.
    status, ctype, body = _get(server, "/metrics", accept="application/openmetrics-text")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_server_progress_json(served: tuple[MetricsServer, dict[str, Any]]) -> None:
    server, progress = served
    status, ctype, body = _get(server, "/progress")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {"step": 0, "totalSteps": 100, "lastCheckpoint": None}
    progress.update(step=50, loss=float("nan"), lastCheckpoint={"step": 40, "uri": "s3://b/x"})
    data = json.loads(_get(server, "/progress")[2])
    assert data["step"] == 50
    assert data["loss"] is None  # NaN loss still gives valid JSON
    assert data["lastCheckpoint"] == {"step": 40, "uri": "s3://b/x"}


def test_server_healthz_404_and_progress_errors() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("loop state unavailable")

    with MetricsServer(0, TrainerMetrics(labels={}), broken, host="127.0.0.1") as server:
        assert _get(server, "/healthz")[::2] == (200, "ok\n")
        assert _get(server, "/nope")[0] == 404
        status, _, body = _get(server, "/progress")
        assert status == 500
        assert "loop state unavailable" in body
        assert _get(server, "/healthz")[0] == 200  # still serving after the error


def test_server_stop_frees_the_port() -> None:
    server = MetricsServer(0, TrainerMetrics(labels={}), dict, host="127.0.0.1").start()
    port = server.port
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    again = MetricsServer(port, TrainerMetrics(labels={}), dict, host="127.0.0.1").start()
    try:
        assert _get(again, "/healthz")[0] == 200
    finally:
        again.stop()


# --- console -----------------------------------------------------------------------------------


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_plain_log_lines_every_log_steps() -> None:
    console, out = _console(terminal=False)
    with ProgressReporter(total_steps=25, log_steps=10, console=console) as reporter:
        for step in range(1, 26):
            reporter.update(
                step, loss=3.0 - step / 10, loss_ema=3.0, lr=3e-4, tokens_per_second=1e4
            )
        reporter.message("validation: val_loss 1.2345")
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines[:3]] == ["step 10/25", "step 20/25", "step 25/25"]
    assert lines[0] == "step 10/25 | loss 2.0000 | ema 3.0000 | lr 3.000e-04 | 10,000 tok/s"
    assert lines[3] == "validation: val_loss 1.2345"
    assert len(lines) == 4


def test_terminal_shows_a_bar_and_nan_plainly() -> None:
    console, out = _console(terminal=True)
    reporter = ProgressReporter(total_steps=4, log_steps=2, console=console)
    for step in range(1, 5):
        reporter.update(step, loss=float("nan"), loss_ema=1.0, lr=1e-3, tokens_per_second=10.0)
    reporter.close()
    text = out.getvalue()
    assert "step 2/4 | loss nan" in text
    assert "4/4" in text  # the bar's M/N column


def test_step_records_and_validation_lines() -> None:
    console, out = _console(terminal=False)
    reporter = ProgressReporter(total_steps=100, log_steps=10, console=console)
    reporter.step(_record(9, loss_ema=None, lr=1e-3, tokens_per_second=5.0))  # bar only
    reporter.step(_record(10, loss_ema=None, lr=1e-3, tokens_per_second=5.0))
    reporter.evaluation(EvalRecord("val", 10, 1.0))
    reporter.evaluation(EvalRecord("test", 10, 1.0))
    assert out.getvalue().splitlines() == [
        "step 10/100 | loss 2.0000 | ema - | lr 1.000e-03 | 5 tok/s",
        f"step 10/100 | val_loss 1.0000 | val_ppl {math.e:.2f}",
        f"test_loss 1.0000 | test_ppl {math.e:.2f}",
    ]


def test_disabled_reporter_prints_nothing() -> None:
    console, out = _console(terminal=False)
    reporter = ProgressReporter(total_steps=4, log_steps=1, console=console, enabled=False)
    reporter.update(1, loss=1.0, loss_ema=1.0, lr=1e-3, tokens_per_second=1.0)
    reporter.message("x")
    assert out.getvalue() == ""


def test_summary_table_renders_all_facts() -> None:
    summary = {
        "steps": 1000,
        "total_steps": 1000,
        "seconds": 3725.0,
        "train_loss": 1.5,
        "val_loss": 1.6,
        "test_loss": None,
        "tokens_per_second": 123456.0,
        "checkpoints": 10,
        "nan_events": 3,
        "restores": 1,
        "resumed_from": 400,
        "last_checkpoint": "s3://b/run/step-1000",
        "run_dir": "runs/demo",
        "parameters": 928_512,
        "trainable_parameters": 28_672,
    }
    console, out = _console(terminal=False)
    console.print(summary_table(summary))
    text = out.getvalue()
    for expected in (
        "1000/1000",
        "1h 02m 05s",
        f"1.5000 / {math.exp(1.5):.2f}",
        f"1.6000 / {math.exp(1.6):.2f}",
        "- / -",
        "123,456",
        "runs/demo",
        "3 / 1",
        "400",
        "s3://b/run/step-1000",
        "928,512, 28,672 trainable (3.1%)",
        "kubetrain run finished",
    ):
        assert expected in text, expected


def test_summary_table_with_missing_facts_and_outcome() -> None:
    console, out = _console(terminal=False)
    console.print(summary_table({"steps": 3, "outcome": "failed", "train_loss": float("nan")}))
    text = out.getvalue()
    assert "kubetrain run failed" in text
    assert "3/-" in text
    assert "nan / nan" in text
    assert "resumed from" not in text


# --- one record, every sink --------------------------------------------------------------------


class _Seen(Sink):
    def __init__(self, every_step: bool) -> None:
        self.every_step = every_step
        self.steps: list[int] = []
        self.evals: list[str] = []

    def step(self, record: StepRecord) -> None:
        self.steps.append(record.step)

    def evaluation(self, record: EvalRecord) -> None:
        self.evals.append(record.split)


def test_sinks_take_every_step_or_the_logged_ones_and_the_last() -> None:
    gauges, files = _Seen(every_step=True), _Seen(every_step=False)
    sinks = Sinks([gauges, files], log_steps=4, total_steps=10)
    for step in range(1, 11):
        sinks.step(_record(step))
    sinks.evaluation(EvalRecord("val", 10, 1.0))
    assert gauges.steps == list(range(1, 11))
    assert files.steps == [4, 8, 10]
    assert gauges.evals == files.evals == ["val"]


def test_build_sinks_writes_files_and_tensorboard_on_rank_zero_only(tmp_path: Path) -> None:
    cfg = MetricsConfig(log_steps=1, console=False, tensorboard=True)
    for rank, run_dir in ((0, tmp_path / "r0"), (1, tmp_path / "r1")):
        sinks = build_sinks(
            cfg, run_dir=run_dir, is_main=rank == 0, total_steps=2, start_step=0,
            prometheus=TrainerMetrics(labels={}),
        )  # fmt: skip
        sinks.step(_record(1))
        sinks.evaluation(EvalRecord("val", 1, 1.0))
        sinks.close()
    assert not (tmp_path / "r1").exists()  # rank 1 writes nothing, TensorBoard included
    events = list((tmp_path / "r0" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert [r["kind"] for r in read_metrics(tmp_path / "r0" / "metrics.jsonl")] == ["train", "val"]


def test_tensorboard_scalars_are_named_like_the_jsonl_fields(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorBoardWriter(tmp_path)
    writer.step(_record(3))
    writer.evaluation(EvalRecord("val", 3, 1.0))
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/perplexity", "val/loss", "val/perplexity"} <= tags
    [loss] = events.Scalars("train/loss")
    assert (loss.step, loss.value) == (3, 2.0)
