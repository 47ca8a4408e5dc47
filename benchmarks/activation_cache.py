"""Seed 003's activation cache: a progressive run with and without it, side by side.

The run is examples/progressive.yaml's trainer (4 stacks grown on a frozen trunk,
time-step masking with per-sequence masks, drawn from 3 time steps) on a small
training split, so that a stage sees every sequence several times at each time step,
as a long stage on a real corpus does. Each
round trains it twice in fresh processes, cached and uncached in alternating order,
and times the steps of stages 1-3 (stage 0 has no trunk to cache).

    make benchmark NAME=activation_cache ARGS="--rounds 3"

Prints (and with --json writes one JSON object): median steps/s with and without the
cache per stage and over stages 1-3, their ratio with its range over rounds, peak RSS
of both, the cache's hit rate, and the final validation loss of both (a sanity check:
the cache must not change what is learned).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "progressive.yaml"


def trainer_config(run_dir: str, cache: bool, stage_steps: int) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())["spec"]["trainer"]
    cfg["run_dir"] = run_dir
    cfg["data"]["path"] = str(REPO / cfg["data"]["path"])
    cfg["data"]["splits"] = {"train": 0.04, "val": 0.02, "test": 0.94}  # ~250 sequences
    training = cfg["training"]
    training["max_steps"] = 4 * stage_steps
    training["eval_steps"] = stage_steps
    training["progressive"]["stage_steps"] = stage_steps
    training["progressive"]["cache"] = {"max_mib": 1024} if cache else None
    # Three time steps: a sequence comes back at the same one often enough to hit.
    training["mlm"]["time_steps"].update(per_sequence=True, bins=[0, 5, 9])
    cfg["metrics"] = {"console": False, "log_steps": stage_steps}
    cfg["checkpoint"] = {"interval_steps": 4 * stage_steps}
    return cfg


def child(cache: bool, stage_steps: int) -> dict[str, Any]:
    """Runs in a fresh process: one training run, timed per stage."""
    import torch

    from kubetrain_core.config import TrainingConfig
    from kubetrain_trainer.callbacks import Callback, TrainerState
    from kubetrain_trainer.distributed import DistInfo
    from kubetrain_trainer.runtime import Runtime
    from kubetrain_trainer.trainer import Trainer

    ends: list[float] = []

    class StepEnd(Callback):
        def on_train_begin(self, state: TrainerState, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

        def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainingConfig.model_validate(trainer_config(tmp, cache, stage_steps))
        cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        trainer = Trainer(cfg, Runtime(), cpu)
        trainer.parts.callbacks.callbacks.append(StepEnd())
        summary = trainer.train()
        strategy = trainer.parts.strategy
        stats = getattr(strategy, "cache", None)
        trainer.close()
    # Step i ends at ends[i + 1]. Evaluations and checkpoints fall between two steps:
    # each stage's slowest 5% of steps (those that waited for one) are left out.
    seconds = [b - a for a, b in itertools.pairwise(ends)]
    per_stage = []
    for stage in range(4):
        times = seconds[stage * stage_steps : (stage + 1) * stage_steps]
        per_stage.append(len(times) / sum(sorted(times)[: int(len(times) * 0.95)] or times))
    return {
        "steps_per_second": per_stage,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "val_loss": summary.val_loss,
        "hits": stats.hits if stats else 0,
        "misses": stats.misses if stats else 0,
    }


def _spawn(cache: bool, stage_steps: int) -> dict[str, Any]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import activation_cache as m; "
        "print(json.dumps(m.child(sys.argv[2] == '1', int(sys.argv[3]))))"
    )
    args = [str(Path(__file__).parent), "1" if cache else "0", str(stage_steps)]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def _per_stage(runs: list[dict[str, Any]]) -> list[float]:
    """Each stage's median steps/s over the runs."""
    stages = zip(*(r["steps_per_second"] for r in runs), strict=True)
    return [statistics.median(stage) for stage in stages]


def measure(rounds: int, stage_steps: int) -> dict[str, Any]:
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for i in range(rounds):
        for cache in (True, False) if i % 2 == 0 else (False, True):
            runs[cache].append(_spawn(cache, stage_steps))

    def grown(run: dict[str, Any]) -> float:  # stages 1-3: the ones with a trunk
        return 3 / sum(1 / float(s) for s in run["steps_per_second"][1:])

    ratios = [grown(a) / grown(b) for a, b in zip(runs[True], runs[False], strict=True)]
    cached, plain = runs[True], runs[False]
    hits = sum(r["hits"] for r in cached)
    result: dict[str, Any] = {
        "rounds": rounds,
        "stage_steps": stage_steps,
        "cached_steps_per_second": statistics.median(grown(r) for r in cached),
        "uncached_steps_per_second": statistics.median(grown(r) for r in plain),
        "speedup": statistics.median(ratios),
        "speedup_range": [min(ratios), max(ratios)],
        "per_stage_cached": _per_stage(cached),
        "per_stage_uncached": _per_stage(plain),
        "cached_peak_rss_mib": max(r["peak_rss_mib"] for r in cached),
        "uncached_peak_rss_mib": max(r["peak_rss_mib"] for r in plain),
        "hit_rate": hits / max(1, hits + sum(r["misses"] for r in cached)),
        "cached_val_loss": cached[-1]["val_loss"],
        "uncached_val_loss": plain[-1]["val_loss"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stage-steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1 round of 40-step stages")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rounds, stage_steps = (1, 40) if args.quick else (args.rounds, args.stage_steps)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}", file=sys.stderr)
    result = measure(rounds, stage_steps)
    if args.json:
        print(json.dumps(result))
        return
    print(f"progressive run, 4 stages of {stage_steps} steps, {rounds} round(s), steps/s:")
    print(f"{'stage':>6} {'cached':>8} {'uncached':>9}")
    for stage, (a, b) in enumerate(
        zip(result["per_stage_cached"], result["per_stage_uncached"], strict=True)
    ):
        print(f"{stage:>6} {a:>8.1f} {b:>9.1f}")
    low, high = result["speedup_range"]
    print(
        f"stages 1-3: {result['cached_steps_per_second']:.1f} vs "
        f"{result['uncached_steps_per_second']:.1f} steps/s, speedup {result['speedup']:.2f}x "
        f"(rounds {low:.2f}-{high:.2f}); hit rate {result['hit_rate']:.0%}"
    )
    print(
        f"peak RSS {result['cached_peak_rss_mib']:.0f} MiB cached, "
        f"{result['uncached_peak_rss_mib']:.0f} MiB uncached; final val loss "
        f"{result['cached_val_loss']:.4f} cached, {result['uncached_val_loss']:.4f} uncached"
    )


if __name__ == "__main__":
    main()
