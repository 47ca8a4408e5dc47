"""Callbacks: user code called at fixed points of the training loop.

The loop owns one ``TrainerState`` and passes it to every hook, with
hook-specific keyword arguments (e.g. ``batch=``, ``checkpoint_uri=``); hooks
accept ``**kwargs`` so that new arguments never break old callbacks. A
callback asks the loop to stop by setting ``state.should_stop``. Built-ins are
registered in ``registry.CALLBACKS`` and built by name from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetrain_core import registry
from kubetrain_core.config.base import lower_is_better
from kubetrain_core.config.schema import CallbackConfig

HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_batch_begin",
    "on_batch_end",
    "on_validation_begin",
    "on_validation_end",
    "on_checkpoint_begin",
    "on_checkpoint_end",
)


@dataclass
class TrainerState:
    """What callbacks see of the loop; ``metrics`` holds the latest value of each metric."""

    step: int = 0
    epoch: float = 0.0  # fractional: 1.5 is halfway through the second pass
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    run_dir: Path = field(default_factory=Path)
    rank: int = 0
    world_size: int = 1


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_train_begin(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_train_end(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_epoch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_epoch_end(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_batch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_validation_begin(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_validation_end(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_checkpoint_begin(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def on_checkpoint_end(self, state: TrainerState, **kwargs: Any) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint so that a resumed run behaves the same."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    """Calls each hook on every callback, in the order given."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def _call(self, hook: str, state: TrainerState, kwargs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(state, **kwargs)

    def on_train_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_train_begin", state, kwargs)

    def on_train_end(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_train_end", state, kwargs)

    def on_epoch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_epoch_begin", state, kwargs)

    def on_epoch_end(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_epoch_end", state, kwargs)

    def on_batch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_batch_begin", state, kwargs)

    def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_batch_end", state, kwargs)

    def on_validation_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_validation_begin", state, kwargs)

    def on_validation_end(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_validation_end", state, kwargs)

    def on_checkpoint_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_checkpoint_begin", state, kwargs)

    def on_checkpoint_end(self, state: TrainerState, **kwargs: Any) -> None:
        self._call("on_checkpoint_end", state, kwargs)

    def state_dict(self) -> dict[str, Any]:
        # Keyed by position and class: a resumed run builds the same list from the same config.
        return {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, cb in enumerate(self.callbacks):
            saved = state.get(f"{i}:{type(cb).__name__}")
            if saved is not None:
                cb.load_state_dict(saved)


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved for ``patience`` validations.

    ``mode`` says which way it improves: ``min``, ``max``, or ``auto`` (lower for
    *loss and *perplexity, higher for scores such as val_bleu). An improvement beats
    the best so far by more than ``min_delta``; a non-finite value never improves.
    Validations that do not report the metric are ignored.
    """

    def __init__(
        self, patience: int, metric: str = "val_loss", min_delta: float = 0.0, mode: str = "auto"
    ) -> None:
        if int(patience) < 1:
            raise ValueError(f"early stopping patience must be >= 1, got {patience}")
        if float(min_delta) < 0:
            raise ValueError(f"early stopping min_delta must be >= 0, got {min_delta}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"early stopping mode must be auto, min or max, got {mode!r}")
        self.patience = int(patience)
        self.metric = str(metric)
        self.min_delta = float(min_delta)
        self.sign = 1.0 if lower_is_better(self.metric, mode) else -1.0  # compare sign * value
        self.best: float | None = None
        self.bad_validations = 0

    def on_validation_end(self, state: TrainerState, **kwargs: Any) -> None:
        if self.metric not in state.metrics:
            return  # no validation split: nothing to watch, and no reason to crash a run
        value = self.sign * state.metrics[self.metric]
        if math.isfinite(value) and (self.best is None or value < self.best - self.min_delta):
            self.best = value
            self.bad_validations = 0
        else:
            self.bad_validations += 1
        if self.bad_validations >= self.patience:
            state.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.bad_validations = int(state["bad_validations"])


def build_callbacks(cfgs: list[CallbackConfig]) -> list[Callback]:
    """Instantiate each configured callback by name with its options as keyword arguments."""
    callbacks: list[Callback] = []
    for cfg in cfgs:
        cls = registry.CALLBACKS.get(cfg.name)
        try:
            callbacks.append(cls(**cfg.options))
        except TypeError as exc:
            raise ValueError(f"callback {cfg.name!r}: bad options {cfg.options}: {exc}") from exc
    return callbacks
