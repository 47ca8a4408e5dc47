"""Trainer step time against a hand-written PyTorch loop on the same model, data and seed.

Both run in this process, interleaved round by round so that machine noise hits
both alike. The plain loop is what a person writes from scratch (nanoGPT
style): batch, forward, loss, backward, clip, AdamW step, LR schedule step,
loss.item(). The trainer runs its full loop (NaN guard, metrics, callbacks),
with validation and checkpoints outside the timed window.

    python benchmarks/trainer_overhead.py [--steps 60] [--rounds 5]

Prints the median step time of each and the ratio trainer / plain (target <= 1.03).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kubetrain_core.config import parse_config
from kubetrain_core.registry import CALLBACKS, DATASET_ADAPTERS, MODEL_ADAPTERS
from kubetrain_trainer.callbacks import Callback, TrainerState
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.runtime import Runtime
from kubetrain_trainer.trainer import Trainer

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_corpus.txt"


@CALLBACKS.register("step_timer")
class StepTimer(Callback):
    """Records the wall time of every step (the extension point doing the measuring)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_batch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def config(steps: int, run_dir: str) -> Any:
    return parse_config(
        {
            "run_dir": run_dir,
            "model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 128},
            "data": {"path": str(CORPUS), "seq_len": 128, "batch_size": 16},
            "optimization": {"scheduler": {"name": "cosine", "warmup_steps": 10}},
            "training": {
                "max_steps": steps,
                "eval_steps": 10**6,
                "eval_batches": 1,
                "device": "cpu",
            },
            "checkpoint": {"interval_steps": 10**6, "resume": False},
            "metrics": {"console": False, "jsonl": True, "log_steps": 10},
        }
    )


def trainer_steps(steps: int, warmup: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(steps, tmp)
        dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        trainer = Trainer(cfg, Runtime(), dist_info)
        timer = StepTimer()
        trainer.parts.callbacks.callbacks.append(timer)
        trainer.train()
        trainer.close()
        return timer.times[warmup:]


def plain_steps(steps: int, warmup: int) -> list[float]:
    cfg = config(steps, "unused")
    torch.manual_seed(cfg.training.seed)
    data = DATASET_ADAPTERS.get("text_file")(cfg.data, seed=cfg.training.seed)
    model = MODEL_ADAPTERS.get("standard")(cfg.model, data.vocab_size).build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimization.optimizer.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = data.train_batch(
            step, 0, rank=0, world_size=1, accumulation_steps=1, device=torch.device("cpu")
        )
        logits = model(batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1)
        )
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    plain: list[float] = []
    ours: list[float] = []
    ratios: list[float] = []
    for r in range(args.rounds):
        # Alternate which runs first, so drift in machine load favours neither.
        runs = [plain_steps, trainer_steps] if r % 2 == 0 else [trainer_steps, plain_steps]
        times = {run: run(args.steps, args.warmup) for run in runs}
        p_round, t_round = times[plain_steps], times[trainer_steps]
        plain += p_round
        ours += t_round
        ratios.append(statistics.median(t_round) / statistics.median(p_round))
        print(
            f"round {r + 1}/{args.rounds}: plain {statistics.median(p_round) * 1e3:.2f} ms, "
            f"trainer {statistics.median(t_round) * 1e3:.2f} ms, ratio {ratios[-1]:.3f}",
            flush=True,
        )
    p, t = statistics.median(plain), statistics.median(ours)
    print(
        f"\nmodel d128 L2, batch 16 x 128 tokens, CPU threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.steps - args.warmup} timed steps each"
    )
    print(f"plain PyTorch loop : {p * 1e3:8.2f} ms/step (median)")
    print(f"kubetrain trainer  : {t * 1e3:8.2f} ms/step (median)")
    print(
        f"ratio trainer/plain: {t / p:8.3f} overall, "
        f"{statistics.median(ratios):.3f} median of rounds"
    )
    print("target             :    <= 1.03")


if __name__ == "__main__":
    main()
