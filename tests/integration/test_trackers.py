"""The W&B and webhook sinks for real: notifications POSTed to an HTTP server on loopback
(started here), and a W&B run in offline mode read back with wandb's own reader.

Nothing leaves the machine: W&B runs offline (WANDB_MODE and mode="offline", no key, its
error reporting off) and the webhook posts to 127.0.0.1 only, with proxies unset."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.webhook_receiver import SECRET, Receiver, receiving

from kubetrain_core.config import ConfigError, MetricsConfig, WandbConfig, WebhookConfig
from kubetrain_trainer.metrics import EvalRecord, StepRecord, TrainerMetrics, build_sinks
from kubetrain_trainer.metrics.wandb_sink import WandbSink, run_id
from kubetrain_trainer.metrics.webhook import QUEUE_SIZE, WebhookSink

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy between the sinks and loopback; W&B offline, silent, writing under tmp."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-home" / "data"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as got:
        yield got


def _drive(sink: WebhookSink) -> None:
    """The trainer's life: start, an evaluation, noise, a rollback, the two outcomes."""
    sink.event("start", 0)
    sink.evaluation(EvalRecord("val", 20, 2.34567, {"bleu": 31.25}))
    sink.event("checkpoint", 20, uri="file:///runs/a/checkpoints/step-20")  # not notified
    sink.event("nan_skip", 21)  # not notified
    sink.message("a console line")  # not notified
    sink.event("restore", 20, uri="file:///runs/a/checkpoints/step-20", skip="21-23")
    sink.event("finished", 100, steps=100, val_loss=1.5)
    sink.event("failed", 57, reason="CUDA error <!channel> & more")
    sink.close()


TEXTS = [
    "job-a started",
    "job-a step 20: val_loss 2.346, val_bleu 31.25",
    "job-a rolled back to step 20 (file:///runs/a/checkpoints/step-20), skipping batches 21-23",
    "job-a finished: 100 steps, val_loss 1.5",
    "job-a failed at step 57: CUDA error <!channel> & more",
]


def test_discord_bodies_in_order(receiver: Receiver) -> None:
    _drive(WebhookSink(WebhookConfig(enabled=True), "job-a", receiver.url()))
    assert receiver.bodies() == [
        {"content": text, "allowed_mentions": {"parse": []}} for text in TEXTS
    ]
    assert {p["type"] for p in receiver.posts} == {"application/json"}
    assert {p["path"] for p in receiver.posts} == {f"/ok/{SECRET}"}


def test_slack_bodies_escape_mentions(receiver: Receiver) -> None:
    _drive(WebhookSink(WebhookConfig(enabled=True, format="slack"), "job-a", receiver.url()))
    bodies = receiver.bodies()
    assert bodies[:4] == [{"text": text} for text in TEXTS[:4]]
    assert bodies[4] == {"text": "job-a failed at step 57: CUDA error &lt;!channel&gt; &amp; more"}


def test_a_resumed_start_says_where(receiver: Receiver) -> None:
    sink = WebhookSink(WebhookConfig(enabled=True, format="slack"), "job-a", receiver.url())
    sink.event("start", 300)
    sink.close()
    assert receiver.bodies() == [{"text": "job-a started, resuming at step 300"}]


def test_events_filters_what_is_sent(receiver: Receiver) -> None:
    cfg = WebhookConfig(enabled=True, format="slack", events=["rollback", "failed"])
    _drive(WebhookSink(cfg, "job-a", receiver.url()))
    texts = [b["text"] for b in receiver.bodies()]
    assert texts == [TEXTS[2], "job-a failed at step 57: CUDA error &lt;!channel&gt; &amp; more"]


def test_two_server_errors_then_success_arrives_on_the_third_attempt(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 503]
    sink = WebhookSink(
        WebhookConfig(enabled=True, max_attempts=3), "job-a", receiver.url(), backoff_seconds=0.05
    )
    sink.event("start", 0)
    sink.close()
    assert [p["status"] for p in receiver.posts] == [500, 503, 204]
    assert [p["body"]["content"] for p in receiver.posts] == ["job-a started"] * 3
    assert (sink.sent, sink.failed) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_retries_stop_at_max_attempts_and_4xx_is_not_retried(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 500, 404]
    cfg = WebhookConfig(enabled=True, max_attempts=2)
    sink = WebhookSink(cfg, "job-a", receiver.url(), backoff_seconds=0.05)
    with caplog.at_level(logging.WARNING):
        sink.event("start", 0)  # 500, 500: given up after 2
        sink.event("finished", 9, steps=9)  # 404: given up at once
        sink.close()
    assert [p["status"] for p in receiver.posts] == [500, 500, 404]
    assert (sink.sent, sink.failed) == (0, 2)
    messages = [r.getMessage() for r in caplog.records]
    assert any("HTTP 500 after 2 attempt(s)" in m for m in messages), messages
    assert any("2 notification(s) not delivered" in m for m in messages), messages
    assert not any(SECRET in m or "127.0.0.1" in m for m in messages)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_server_never_raises_and_close_keeps_its_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api/webhooks/42/{SECRET}"
    cfg = WebhookConfig(enabled=True, timeout_seconds=1, max_attempts=3)
    sink = WebhookSink(cfg, "job-a", url, backoff_seconds=0.05)
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        _drive(sink)  # closes
        sink.close()  # twice is harmless
        took = time.monotonic() - started
    assert took < sink.flush_seconds, took
    assert (sink.sent, sink.failed) == (0, 5)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings and "ConnectionRefusedError" in warnings[0].getMessage()
    for record in caplog.records:  # the URL, its secret and its port appear nowhere
        text = record.getMessage() + repr(record.args) + str(record.exc_info)
        assert SECRET not in text and url.split("/api", maxsplit=1)[0] not in text, text
    assert SECRET not in repr(sink)


def test_a_hanging_server_cannot_hold_close_past_its_deadline() -> None:
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook/{SECRET}"
        cfg = WebhookConfig(enabled=True, timeout_seconds=0.3, max_attempts=3)
        sink = WebhookSink(cfg, "job-a", url, backoff_seconds=0.05)
        for step in range(5):
            sink.evaluation(EvalRecord("val", step, 1.0))
        started = time.monotonic()
        sink.close()
        took = time.monotonic() - started
    assert sink.flush_seconds == pytest.approx(0.3 * 3 + 0.05 + 0.1)
    assert took < sink.flush_seconds + 2.0, took  # bounded: a slack for a loaded machine
    assert sink.sent == 0


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        cfg = WebhookConfig(enabled=True, timeout_seconds=0.2)
        sink = WebhookSink(cfg, "job-a", url, backoff_seconds=0.05)
        started = time.monotonic()
        for step in range(QUEUE_SIZE + 50):
            sink.evaluation(EvalRecord("val", step, 1.0))
        assert time.monotonic() - started < 1.0  # the loop never waits on the webhook
        assert sink.dropped in (49, 50)  # the worker may have taken one off the queue
        sink.close()
        took = time.monotonic() - started
    assert took < sink.flush_seconds + 2.0, took
    assert sink.sent == 0


def test_a_missing_or_bad_url_is_a_config_error_that_never_shows_it(tmp_path: Path) -> None:
    cfg = MetricsConfig(webhook=WebhookConfig(enabled=True, url_env="MY_HOOK"), console=False)

    def build(env: dict[str, str]) -> None:
        build_sinks(
            cfg, run_dir=tmp_path, is_main=True, total_steps=1, start_step=0,
            prometheus=TrainerMetrics(labels={}), job_name="job-a", env=env,
        )  # fmt: skip

    for env in ({}, {"MY_HOOK": ""}, {"MY_HOOK": "  "}):
        with pytest.raises(ConfigError) as info:
            build(env)
        assert "metrics.webhook.url_env" in str(info.value) and "MY_HOOK" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build({"MY_HOOK": f"hooks.example.com/{SECRET}"})
    assert "http(s) URL" in str(info.value) and SECRET not in str(info.value)


def test_build_sinks_notifies_from_rank_zero_only(receiver: Receiver, tmp_path: Path) -> None:
    cfg = MetricsConfig(webhook=WebhookConfig(enabled=True, format="slack"), console=False)
    env = {"KUBETRAIN_WEBHOOK_URL": receiver.url()}
    for rank in (0, 1):
        sinks = build_sinks(
            cfg, run_dir=tmp_path / f"r{rank}", is_main=rank == 0, total_steps=1,
            start_step=0, prometheus=TrainerMetrics(labels={}), job_name=f"job-{rank}", env=env,
        )  # fmt: skip
        sinks.event("start", 0)
        sinks.close()
    assert receiver.bodies() == [{"text": "job-0 started"}]


# --- W&B, offline, read back ---------------------------------------------------------------


def _step(step: int, loss: float) -> StepRecord:
    return StepRecord(
        step=step, epoch=0.5, loss=loss, loss_ema=None, lr=1e-3, grad_norm=0.5,
        tokens_per_second=100.0, samples_per_second=2.0,
    )  # fmt: skip


def _wandb_records(run_dir: Path, sink_id: str) -> list[dict[str, Any]]:
    """The records of the run's .wandb transaction log, as wandb's own reader prints them
    (`wandb leet inspect --json`, which wandb-core implements)."""
    [log_file] = (run_dir / "wandb").glob(f"offline-run-*-{sink_id}/run-{sink_id}.wandb")
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log_file)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def test_offline_run_holds_the_steps_evaluations_and_events(tmp_path: Path) -> None:
    cfg = WandbConfig(enabled=True, mode="offline", project="proj", tags=["t1", "t2"])
    config = {"training": {"max_steps": 30}, "seed": 7}
    sink = WandbSink(cfg, tmp_path, "job-a", config)
    sink.step(_step(10, 2.5))
    sink.step(_step(20, 2.0))
    sink.evaluation(EvalRecord("val", 20, 1.75, {"bleu": 31.5}))
    sink.event("restore", 10, uri="file:///x/step-10", skip="11-12")
    sink.step(_step(15, 1.9))  # after the rollback the step goes back: kept, not dropped
    sink.message("not sent")
    sink.close()

    records = _wandb_records(tmp_path, sink.run_id)
    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert (run["run_id"], run["project"], run["display_name"]) == (sink.run_id, "proj", "job-a")
    assert run["tags"] == ["t1", "t2"] and run["resume"] is True
    assert run["config"]["update"]["training"] == {"max_steps": 30}
    assert run["config"]["update"]["seed"] == 7

    history = _history(records)
    train = [(h["step"], h["loss"], h["lr"]) for h in history if "loss" in h]
    assert train == [(10, 2.5, 1e-3), (20, 2.0, 1e-3), (15, 1.9, 1e-3)]
    assert all("loss_ema" not in h for h in history)  # None is left out
    [val] = [h for h in history if "val_loss" in h]
    assert (val["step"], val["val_loss"], val["val_bleu"]) == (20, 1.75, 31.5)
    assert val["val_perplexity"] == pytest.approx(5.754602676)
    [event] = [h for h in history if "event/restore" in h]
    assert (event["step"], event["event/restore"]) == (10, 1)
    [exit_record] = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0


def test_a_failed_event_marks_the_run_failed_and_a_resume_keeps_the_id(tmp_path: Path) -> None:
    cfg = WandbConfig(enabled=True, mode="offline")
    first = WandbSink(cfg, tmp_path, "job-b", {})
    first.step(_step(5, 3.0))
    first.event("failed", 5, reason="loss diverged")
    first.close()
    records = _wandb_records(tmp_path, first.run_id)
    assert [r["exit"].get("exit_code") for r in records if r["type"] == "exit"] == [1]
    summaries = [r["summary"]["update"] for r in records if r["type"] == "summary"]
    assert any(s.get("failed_reason") == "loss diverged" for s in summaries)

    again = WandbSink(cfg, tmp_path, "job-b", {})  # the next attempt of the same job
    assert again.run_id == first.run_id == run_id(tmp_path, "job-b")
    again.close()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{first.run_id}"))) >= 1
    assert run_id(tmp_path / "other", "job-b") != first.run_id
    assert first.run_id.startswith("job-b-")


def test_build_sinks_starts_wandb_on_rank_zero_only(tmp_path: Path) -> None:
    cfg = MetricsConfig(wandb=WandbConfig(enabled=True, mode="offline"), console=False)
    for rank in (0, 1):
        sinks = build_sinks(
            cfg, run_dir=tmp_path / f"r{rank}", is_main=rank == 0, total_steps=10,
            start_step=0, prometheus=TrainerMetrics(labels={}), job_name="job-c",
            config={"seed": 1},
        )  # fmt: skip
        sinks.step(_step(10, 1.0))
        sinks.close()
    assert not (tmp_path / "r1" / "wandb").exists()
    sink_id = run_id(tmp_path / "r0", "job-c")
    history = _history(_wandb_records(tmp_path / "r0", sink_id))
    assert [(h["step"], h["loss"]) for h in history if "loss" in h] == [(10, 1.0)]


def test_online_without_an_api_key_is_a_clear_error_before_anything_starts(
    tmp_path: Path,
) -> None:
    cfg = WandbConfig(enabled=True, mode="online")
    with pytest.raises(ConfigError) as info:
        WandbSink(cfg, tmp_path, "job-d", {}, env={"WANDB_API_KEY": " "})
    assert "metrics.wandb" in str(info.value) and "WANDB_API_KEY" in str(info.value)
    assert not (tmp_path / "wandb").exists()
    metrics = MetricsConfig(wandb=cfg, console=False, jsonl=False)
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        build_sinks(
            metrics, run_dir=tmp_path, is_main=True, total_steps=1, start_step=0,
            prometheus=TrainerMetrics(labels={}), env={},
        )  # fmt: skip
    assert not (tmp_path / "wandb").exists()


def test_a_training_run_notifies_start_evaluations_and_its_end(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The trainer itself emits what the sink sends: a real run, a real POST per event."""
    from tests.integration.trainer_runs import env_with, kubetrain, tiny_config, write_config

    cfg = tiny_config(
        tmp_path / "run",
        training={"max_steps": 4, "eval_steps": 2},
        metrics={"webhook": {"enabled": True}},
    )
    env = env_with(KUBETRAIN_WEBHOOK_URL=receiver.url(), NO_PROXY="*", no_proxy="*")
    result = kubetrain("train", "--config", str(write_config(tmp_path / "c.yaml", cfg)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    texts = [body["content"] for body in receiver.bodies()]
    assert texts[0] == "run started"  # the job name: the run dir's, outside a cluster
    assert [t.split(":")[0] for t in texts[1:3]] == ["run step 2", "run step 4"]
    assert texts[-1].startswith("run finished")
    assert SECRET not in result.stdout + result.stderr
