"""Callbacks: dispatch order, EarlyStopping, building from config."""

from __future__ import annotations

from typing import Any

import pytest

from kubetrain_core import registry
from kubetrain_core.config.schema import CallbackConfig
from kubetrain_trainer.callbacks import (
    HOOKS,
    Callback,
    CallbackList,
    EarlyStopping,
    TrainerState,
    build_callbacks,
)


class Recorder(Callback):
    def __init__(self, name: str, calls: list[tuple[str, str, dict[str, Any]]]) -> None:
        self.name = name
        self.calls = calls

    def __getattribute__(self, attr: str) -> Any:
        if attr in HOOKS:
            return lambda state, **kwargs: self.calls.append((self.name, attr, kwargs))
        return super().__getattribute__(attr)


def test_base_hooks_are_no_ops() -> None:
    state = TrainerState(step=3)
    for hook in HOOKS:
        getattr(Callback(), hook)(state, anything=1)
    assert state == TrainerState(step=3)


def test_callback_list_dispatches_every_hook_in_order_with_kwargs() -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []
    callbacks = CallbackList([Recorder("a", calls), Recorder("b", calls)])
    state = TrainerState()
    for hook in HOOKS:
        getattr(callbacks, hook)(state, hook_arg=hook)
    expected = [(name, hook, {"hook_arg": hook}) for hook in HOOKS for name in ("a", "b")]
    assert calls == expected


def test_callback_can_stop_training_through_state() -> None:
    class StopAt(Callback):
        def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
            state.should_stop = state.step >= 3

    callbacks = CallbackList([StopAt()])
    state = TrainerState(total_steps=10)
    while not state.should_stop and state.step < state.total_steps:
        state.step += 1
        callbacks.on_batch_end(state)
    assert state.step == 3


def _validate(stopper: Callback, state: TrainerState, value: float) -> bool:
    state.metrics["val_loss"] = value
    stopper.on_validation_end(state)
    return state.should_stop


def test_early_stopping_after_patience_without_improvement() -> None:
    stopper, state = EarlyStopping(patience=2), TrainerState()
    assert [_validate(stopper, state, v) for v in (3.0, 2.0, 2.5)] == [False, False, False]
    assert _validate(stopper, state, 2.1)  # second validation without a new best
    assert stopper.best == 2.0


def test_early_stopping_improvement_resets_patience() -> None:
    stopper, state = EarlyStopping(patience=2), TrainerState()
    for value in (3.0, 3.1, 2.9, 3.0):  # 2.9 improves: the count starts again
        assert not _validate(stopper, state, value)
    assert _validate(stopper, state, 3.0)


def test_early_stopping_min_delta_and_nan() -> None:
    stopper, state = EarlyStopping(patience=2, min_delta=0.1), TrainerState()
    _validate(stopper, state, 2.0)
    assert not _validate(stopper, state, 1.95)  # smaller than min_delta: not an improvement
    assert _validate(stopper, state, float("nan"))
    assert stopper.best == 2.0


def test_early_stopping_other_metric_ignores_missing_and_round_trips() -> None:
    stopper, state = EarlyStopping(patience=1, metric="val_perplexity"), TrainerState()
    stopper.on_validation_end(state)  # no val metrics reported: nothing happens
    state.metrics["val_perplexity"] = 10.0
    stopper.on_validation_end(state)
    saved = CallbackList([stopper]).state_dict()

    resumed = EarlyStopping(patience=1, metric="val_perplexity")
    CallbackList([resumed]).load_state_dict(saved)
    assert resumed.best == 10.0
    state.metrics["val_perplexity"] = 11.0
    resumed.on_validation_end(state)
    assert state.should_stop


def test_early_stopping_on_a_score_that_rises() -> None:
    stopper, state = EarlyStopping(patience=2, metric="val_bleu", min_delta=0.5), TrainerState()

    def bleu(value: float) -> bool:
        state.metrics["val_bleu"] = value
        stopper.on_validation_end(state)
        return state.should_stop

    assert [bleu(v) for v in (10.0, 20.0, 20.4)] == [False, False, False]  # 20.4: < min_delta
    assert bleu(19.0)  # the second validation without a new best
    assert stopper.best == -20.0  # kept as "lower is better", whatever the metric's direction
    loss_like = EarlyStopping(patience=1, metric="val_bleu", mode="min")
    state = TrainerState(metrics={"val_bleu": 10.0})
    loss_like.on_validation_end(state)
    state.metrics["val_bleu"] = 12.0
    loss_like.on_validation_end(state)
    assert state.should_stop


def test_early_stopping_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(patience=1, min_delta=-1.0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(patience=1, mode="up")


def test_build_callbacks_from_config() -> None:
    [stopper] = build_callbacks(
        [CallbackConfig(name="early_stopping", options={"patience": 4, "min_delta": 0.5})]
    )
    assert isinstance(stopper, EarlyStopping)
    assert (stopper.patience, stopper.min_delta, stopper.metric) == (4, 0.5, "val_loss")
    with pytest.raises(ValueError, match="early_stopping"):
        build_callbacks([CallbackConfig(name="early_stopping", options={"wait": 3})])
    assert build_callbacks([]) == []


def test_registered_extension_callback_is_built_by_name() -> None:
    @registry.CALLBACKS.register("test_counter")
    class Counter(Callback):
        def __init__(self, start: int = 0) -> None:
            self.count = start

    [built] = build_callbacks([CallbackConfig(name="test_counter", options={"start": 5})])
    assert isinstance(built, Counter)
    assert built.count == 5
