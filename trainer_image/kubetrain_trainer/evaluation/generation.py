"""Generation metrics: at each validation the model answers validation records and the
configured metrics score its answers against the records' own (evaluation section).

The records are the split's first `num_samples`, the same at every evaluation, so the
scores of two evaluations compare. Each process answers its share (record i goes to
rank i % world size); the answers are gathered to every process, which all score the
same corpus and so agree on any decision taken from a score. Under fsdp a forward is a
collective: every process answers as many prompts as the busiest (padding with copies
whose answers are dropped) and generates in lockstep. Rank 0 appends every sample to
<run_dir>/generations.jsonl as {step, index, prompt, prediction, reference}.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import nn

from kubetrain_core import registry
from kubetrain_core.config import ConfigError, EvaluationConfig, TrainingConfig
from kubetrain_trainer.data.base import DatasetAdapter
from kubetrain_trainer.distributed import DistInfo, all_gather_object
from kubetrain_trainer.evaluation.metrics import TextMetric
from kubetrain_trainer.models.adapters import Generation, ModelAdapter

GENERATIONS_FILE = "generations.jsonl"
ALWAYS_LOGGED = ("val_loss", "val_perplexity")


def check_watched(cfg: TrainingConfig, metrics: list[TextMetric]) -> None:
    """Refuse, at start, early stopping or best checkpoints that watch a validation
    metric this run never logs (they would silently never act); unknowable when a
    plugin metric does not list its names."""
    if any(metric.names is None for metric in metrics):
        return
    logged = [*ALWAYS_LOGGED, *(f"val_{name}" for m in metrics for name in m.names or ())]
    watched = {
        "training.early_stopping.metric": cfg.training.early_stopping.patience is not None
        and cfg.training.early_stopping.metric,
        "checkpoint.best_metric": cfg.checkpoint.keep_best > 0 and cfg.checkpoint.best_metric,
    }
    for field, metric in watched.items():
        if metric and metric not in logged:
            raise ConfigError(
                field,
                [
                    f"{metric} is never logged by this run, which logs {', '.join(logged)}; "
                    "watch one of those, or add the evaluation.metrics entry that produces it"
                ],
            )


def build_generation(
    cfg: TrainingConfig,
    *,
    dataset: DatasetAdapter,
    adapter: ModelAdapter,
    dist_info: DistInfo,
    synced: bool,
    run_dir: Path,
) -> GenerationEvaluator | None:
    """The run's generation evaluator (None: no text metrics in `evaluation.metrics`),
    once early stopping and best checkpoints are known to watch metrics it logs."""
    generation = (
        GenerationEvaluator(
            cfg.evaluation,
            dataset=dataset,
            adapter=adapter,
            dist_info=dist_info,
            synced=synced,
            batch_size=cfg.data.batch_size,
            run_dir=run_dir,
        )
        if cfg.evaluation.metrics
        else None
    )
    check_watched(cfg, generation.metrics if generation else [])
    return generation


class GenerationEvaluator:
    def __init__(
        self,
        cfg: EvaluationConfig,
        *,
        dataset: DatasetAdapter,
        adapter: ModelAdapter,
        dist_info: DistInfo,
        synced: bool,
        batch_size: int,
        run_dir: Path,
    ) -> None:
        self.adapter, self.dist = adapter, dist_info
        self.metrics: list[TextMetric] = [registry.METRICS.get(name)() for name in cfg.metrics]
        self.examples = dataset.examples("val", cfg.num_samples)
        if not self.examples:
            raise ConfigError(
                "data.splits.val",
                ["evaluation.metrics need validation records: the val split is empty"],
            )
        tokenizer = dataset.tokenizer
        self.decode = tokenizer.decode_text
        eos = tokenizer.eos_id
        self.settings = Generation(
            max_new_tokens=cfg.max_new_tokens,
            num_beams=cfg.num_beams,
            eos_id=eos,
            pad_id=eos if eos is not None else 0,
            device=dist_info.device,
            synced=synced,
        )
        self.batch_size = batch_size  # prompts per generate call: data.batch_size
        self.file = Path(run_dir) / GENERATIONS_FILE if dist_info.is_main else None

    def evaluate(
        self, model: nn.Module, step: int, autocast: Callable[[], AbstractContextManager[Any]]
    ) -> dict[str, float]:
        """Every metric's scores of the answers `model` gives now."""
        mine = self._share()
        answers: list[list[int]] = []
        was_training = model.training
        model.eval()
        try:
            for first in range(0, len(mine), self.batch_size):
                chunk = mine[first : first + self.batch_size]
                with autocast():
                    prompts = [self.examples[i].prompt_ids for i in chunk]
                    answers += self.adapter.generate(model, prompts, self.settings)
        finally:
            model.train(was_training)
        own = {i: self.decode(ids) for i, ids in zip(mine, answers, strict=True)}
        predictions: dict[int, str] = {}
        for part in all_gather_object(own):
            predictions.update(part)
        ordered = [predictions[i] for i in range(len(self.examples))]
        scores = self._score(ordered)
        self._record(step, ordered)
        return scores

    def _share(self) -> list[int]:
        """This process's record indices; all equally many when synced (copies of the
        first pad the short ones, and a copy's answer is overwritten by the real one)."""
        n, world, rank = len(self.examples), self.dist.world_size, self.dist.rank
        mine = list(range(rank, n, world))
        if self.settings.synced:
            mine += [mine[0] if mine else 0] * (math.ceil(n / world) - len(mine))
        return mine

    def _score(self, predictions: list[str]) -> dict[str, float]:
        references = [e.reference for e in self.examples]
        prompts = [e.prompt for e in self.examples]
        scores: dict[str, float] = {}
        for metric in self.metrics:
            scores.update(metric.compute(predictions, references, prompts))
        return scores

    def _record(self, step: int, predictions: list[str]) -> None:
        if self.file is None:
            return
        with self.file.open("a", encoding="utf-8") as out:
            for index, (example, prediction) in enumerate(
                zip(self.examples, predictions, strict=True)
            ):
                row = {
                    "step": step,
                    "index": index,
                    "prompt": example.prompt,
                    "prediction": prediction,
                    "reference": example.reference,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
