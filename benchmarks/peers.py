"""The kubetrain trainer against Hugging Face's Trainer, Lightning's Trainer and a plain
PyTorch loop: the same nn.Module, batches, optimizer, schedule, clipping and seed.

    python benchmarks/peers.py [--steps 40] [--warmup 10] [--rounds 6] [--json]
    python benchmarks/peers.py --quick          # 2 short rounds: does everything run?

Each runner trains in a fresh process of its own (imports and allocator state are not
shared); a round runs all four, in an order rotated every round, so a drift in the
machine's load reaches each runner in each position. A step's time is the wall time
between the ends of two consecutive steps, measured by each framework's own
step-end hook (callback), so whatever a framework does between steps counts. Only
steps after `--warmup` count. Printed: median ms/step of each runner over all rounds,
the spread of its round medians, ratios to the plain loop and to each peer (median of
the per-round ratios, with their range), peak RSS, and each runner's final loss: they
train the same thing, so the losses agree to float precision (a check, printed).
The peers come from the `bench` extra (pip install -e '.[bench]').
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

RUNNERS = ("plain", "kubetrain", "hf_trainer", "lightning")
CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_corpus.txt"
THREADS = 2


def trainer_config(steps: int, run_dir: str) -> Any:
    """The one definition of the workload: kubetrain's config, which the others read."""
    from kubetrain_core.config import parse_config

    return parse_config(
        {
            "run_dir": run_dir,
            "model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 128},
            "data": {"path": str(CORPUS), "seq_len": 128, "batch_size": 16},
            "optimization": {
                "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
                "scheduler": {"name": "cosine", "warmup_steps": 10},
                "max_grad_norm": 1.0,
            },
            "training": {"max_steps": steps, "eval_steps": 10**6, "device": "cpu"},
            "checkpoint": {"interval_steps": 10**6, "resume": False},
            "metrics": {"console": False, "jsonl": True, "log_steps": 10},
        }
    )


class Workload:
    """Model, batches, optimizer and schedule built the same way for every runner."""

    def __init__(self, steps: int) -> None:
        import torch

        from kubetrain_core.registry import DATASET_ADAPTERS, MODEL_ADAPTERS
        from kubetrain_trainer.optimization import build_optimizer, build_scheduler

        self.cfg = cfg = trainer_config(steps, "unused")
        torch.manual_seed(cfg.training.seed)
        data = DATASET_ADAPTERS.get("text_file")(cfg.data, seed=cfg.training.seed)
        self.model = MODEL_ADAPTERS.get("standard")(cfg.model, data.vocab_size).build_model()
        cpu = torch.device("cpu")
        self.batches = [
            data.train_batch(s, 0, rank=0, world_size=1, accumulation_steps=1, device=cpu)
            for s in range(steps)
        ]
        self.optimizer = build_optimizer(self.model, cfg.optimization.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimization.scheduler, steps)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch.nn.functional as F  # noqa: N812

        logits = model(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())


class Clock:
    """Step-end timestamps; a step's time is the gap to the previous step's end. Also the
    process's CPU time (all threads) at each step end: it leaves out waiting for a core,
    but torch's OpenMP threads spin while they wait, so under contention it grows too."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.restart()

    def restart(self) -> None:
        self.ends, self.cpu_ends = [time.perf_counter()], [time.process_time()]

    def tick(self, loss: float | None = None) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        if loss is not None:
            self.losses.append(loss)

    def times(self, warmup: int) -> list[float]:
        return _gaps(self.ends)[warmup:]

    def cpu_times(self, warmup: int) -> list[float]:
        return _gaps(self.cpu_ends)[warmup:]


def _gaps(marks: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(marks)]


def run_plain(steps: int) -> Clock:
    """What a person writes from scratch (nanoGPT style)."""
    import torch

    work = Workload(steps)
    model, optimizer, scheduler = work.model, work.optimizer, work.scheduler
    clock = Clock()
    for batch in work.batches:
        loss = work.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        clock.tick(loss.item())
    return clock


def run_kubetrain(steps: int) -> Clock:
    import torch

    from kubetrain_trainer.callbacks import Callback, TrainerState
    from kubetrain_trainer.distributed import DistInfo
    from kubetrain_trainer.runtime import Runtime
    from kubetrain_trainer.trainer import Trainer

    clock = Clock()

    class StepEnd(Callback):
        def on_train_begin(self, state: TrainerState, **kwargs: Any) -> None:
            clock.restart()

        def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
            clock.tick(state.metrics.get("loss"))

    with tempfile.TemporaryDirectory() as tmp:
        cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        trainer = Trainer(trainer_config(steps, tmp), Runtime(), cpu)
        trainer.parts.callbacks.callbacks.append(StepEnd())
        trainer.train()
        trainer.close()
    return clock


class _Steps:
    """Batch `i` of the workload at index `i` (a map-style dataset of whole batches)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


def run_hf_trainer(steps: int) -> Clock:
    """transformers' Trainer the usual way: a module returning {"loss"}, TrainingArguments,
    our optimizer and schedule passed in (optimizers=...), batches in order."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    work, clock = Workload(steps), Clock()
    losses: list[Any] = []

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = work.model

        def forward(self, input_ids: Any, targets: Any) -> dict[str, Any]:
            loss = work.loss(self.inner, {"input_ids": input_ids, "targets": targets})
            losses.append(loss.detach())  # read after training: no sync added per step
            return {"loss": loss}

    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

    class StepEnd(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.restart()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=1,
            max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=1234,
        )  # fmt: skip
        trainer = InOrder(
            model=WithLoss(), args=args, train_dataset=cast(Any, _Steps(work.batches)),
            data_collator=lambda items: items[0],
            optimizers=(work.optimizer, cast(Any, work.scheduler)),
            callbacks=[StepEnd()],
        )  # fmt: skip
        trainer.train()
    clock.losses = [float(loss) for loss in losses]
    return clock


def run_lightning(steps: int) -> Clock:
    """Lightning the usual way: a LightningModule with training_step and
    configure_optimizers, Trainer(max_steps, gradient_clip_val)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    work, clock = Workload(steps), Clock()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = work.model

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            loss = work.loss(self.inner, batch)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return {
                "optimizer": work.optimizer,
                "lr_scheduler": {"scheduler": work.scheduler, "interval": "step"},
            }

    class StepEnd(pl.Callback):
        def on_train_start(self, *args: Any) -> None:
            clock.restart()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
            clock.tick(float(outputs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=steps, accelerator="cpu", devices=1, gradient_clip_val=1.0,
            log_every_n_steps=10, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, logger=False, callbacks=[StepEnd()],
            default_root_dir=tmp, num_sanity_val_steps=0,
        )  # fmt: skip
        loader: DataLoader[Any] = DataLoader(cast(Any, _Steps(work.batches)), batch_size=None)
        trainer.fit(Module(), train_dataloaders=loader)
    return clock


RUN: dict[str, Callable[[int], Clock]] = {
    "plain": run_plain,
    "kubetrain": run_kubetrain,
    "hf_trainer": run_hf_trainer,
    "lightning": run_lightning,
}


def child(name: str, steps: int, warmup: int) -> None:
    """One runner in this process: prints one JSON line."""
    import torch

    torch.set_num_threads(THREADS)
    clock = RUN[name](steps)
    print(
        json.dumps(
            {
                "times": clock.times(warmup),
                "cpu_times": clock.cpu_times(warmup),
                "final_loss": clock.losses[-1] if clock.losses else None,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def _spawn(name: str, steps: int, warmup: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--runner", name, "--steps", str(steps),
           "--warmup", str(warmup)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(runners: list[str], steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {r: [] for r in runners}
    cpu: dict[str, list[float]] = {r: [] for r in runners}
    round_medians: dict[str, list[float]] = {r: [] for r in runners}
    rss: dict[str, float] = dict.fromkeys(runners, 0.0)
    losses: dict[str, float | None] = {}
    for i in range(rounds):
        order = runners[i % len(runners) :] + runners[: i % len(runners)]
        for name in order:
            got = _spawn(name, steps, warmup)
            times[name] += got["times"]
            cpu[name] += got["cpu_times"]
            round_medians[name].append(statistics.median(got["times"]))
            rss[name] = max(rss[name], got["peak_rss_mib"])
            losses[name] = got["final_loss"]
        line = ", ".join(f"{n} {round_medians[n][-1] * 1e3:.2f}" for n in runners)
        print(f"round {i + 1}/{rounds} ({' > '.join(order)}): ms/step {line}", file=sys.stderr)
    result: dict[str, Any] = {"steps": steps, "warmup": warmup, "rounds": rounds,
                              "threads": THREADS}  # fmt: skip
    for name in runners:
        result[f"{name}_ms"] = statistics.median(times[name]) * 1e3
        result[f"{name}_round_ms"] = [m * 1e3 for m in round_medians[name]]
        result[f"{name}_cpu_ms"] = statistics.median(cpu[name]) * 1e3
        result[f"{name}_peak_rss_mib"] = rss[name]
        result[f"{name}_final_loss"] = losses[name]
    if "kubetrain" in runners:
        for other in (r for r in runners if r != "kubetrain"):
            per_round = [
                k / o for k, o in zip(round_medians["kubetrain"], round_medians[other], strict=True)
            ]
            result[f"kubetrain_over_{other}"] = statistics.median(per_round)
            result[f"kubetrain_over_{other}_range"] = [min(per_round), max(per_round)]
            result[f"kubetrain_minus_{other}_ms"] = result["kubetrain_ms"] - result[f"{other}_ms"]
            cpu_ratio = result["kubetrain_cpu_ms"] / result[f"{other}_cpu_ms"]
            result[f"kubetrain_over_{other}_cpu"] = cpu_ratio
    return result


def report(result: dict[str, Any], runners: list[str]) -> None:
    print(
        f"model d128 L2 (char vocab), batch 16 x 128 tokens, CPU, {result['threads']} threads;"
        f" {result['rounds']} rounds x {result['steps'] - result['warmup']} timed steps"
    )
    for name in runners:
        spread = result[f"{name}_round_ms"]
        print(
            f"{name:11s} {result[f'{name}_ms']:8.2f} ms/step (rounds {min(spread):.2f}-"
            f"{max(spread):.2f}), CPU {result[f'{name}_cpu_ms']:7.2f} ms/step,"
            f" peak RSS {result[f'{name}_peak_rss_mib']:6.0f} MiB,"
            f" final loss {result[f'{name}_final_loss']}"
        )
    for name in runners:
        key = f"kubetrain_over_{name}"
        if key in result:
            low, high = result[f"{key}_range"]
            print(
                f"kubetrain / {name:10s} {result[key]:.3f} (rounds {low:.3f}-{high:.3f}),"
                f" {result[f'kubetrain_minus_{name}_ms']:+.2f} ms/step;"
                f" CPU time {result[f'kubetrain_over_{name}_cpu']:.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--quick", action="store_true", help="2 rounds of 15 steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)  # a child
    args = parser.parse_args()
    if args.runner:
        child(args.runner, args.steps, args.warmup)
        return
    if args.quick:
        args.steps, args.warmup, args.rounds = 15, 5, 2
    runners = args.runners.split(",")
    result = measure(runners, args.steps, args.warmup, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        report(result, runners)


if __name__ == "__main__":
    main()
