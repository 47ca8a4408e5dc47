"""How long a checkpoint blocks the training loop: asynchronous uploads against synchronous.

One process starts a real MinIO (the test harness's) and runs the trainer in this
process on the same model, data and seed, alternating sync and async rounds so that
machine noise hits both alike. Each round trains `--steps` steps with a checkpoint
every `--interval` steps to its own S3 prefix. The stall of a checkpoint is the time
from the loop entering `save_checkpoint` to leaving it (callbacks on_checkpoint_begin
and on_checkpoint_end): for sync the copy into RAM, DCP write, upload and commit; for
async the copy of the state into RAM plus any wait for the previous save. The final
checkpoint (flushed at the end of training) is not a stall of the loop and is left out.

The first async checkpoint of a run also allocates the staging memory that every later
one reuses, so its stall is reported apart from the later ones too.

    make benchmark NAME=checkpoint_stall ARGS="--steps 60 --interval 20 --rounds 2"

Prints the median stall of each, the checkpoint size, the extra RAM async holds (one
copy of model + optimizer state) and the ratio async / sync (target <= 0.1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from kubetrain_core.config import parse_config
from kubetrain_trainer.callbacks import Callback, TrainerState
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.runtime import Runtime
from kubetrain_trainer.trainer import Trainer
from localkube.s3 import new_bucket, running_minio, s3_env

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_corpus.txt"


class StallTimer(Callback):
    """Wall time of every checkpoint the loop asked for, and of every step."""

    def __init__(self) -> None:
        self.stalls: dict[int, float] = {}
        self.steps: list[float] = []
        self._ckpt = self._step = 0.0

    def on_checkpoint_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._ckpt = time.perf_counter()

    def on_checkpoint_end(self, state: TrainerState, **kwargs: Any) -> None:
        self.stalls[state.step] = time.perf_counter() - self._ckpt

    def on_batch_begin(self, state: TrainerState, **kwargs: Any) -> None:
        self._step = time.perf_counter()

    def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
        self.steps.append(time.perf_counter() - self._step)


def config(run_dir: str, uri: str, endpoint: str, steps: int, interval: int, *, sync: bool) -> Any:
    return parse_config(
        {
            "run_dir": run_dir,
            "model": {"d_model": 512, "n_layers": 4, "n_heads": 8, "max_seq_len": 64},
            "data": {"path": str(CORPUS), "seq_len": 64, "batch_size": 4},
            "training": {
                "max_steps": steps,
                "eval_steps": 10**6,
                "eval_batches": 1,
                "device": "cpu",
            },
            "checkpoint": {
                "uri": uri,
                "interval_steps": interval,
                "keep_last": 2,
                "resume": False,
                "async_upload": not sync,
                "s3": {"endpoint": endpoint},
            },
            "metrics": {"console": False, "jsonl": False},
            "recovery": {"good_after_steps": 1},
        }
    )


def state_bytes(trainer: Trainer) -> int:
    """Bytes of the model + optimizer tensors: the copy a snapshot holds in RAM."""
    model_state, optim_state = get_state_dict(trainer.parts.raw_model, trainer.parts.optimizer)
    leaves = torch.utils._pytree.tree_leaves([model_state, optim_state])
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def run(
    endpoint: str, bucket: str, args: argparse.Namespace, r: int, *, sync: bool
) -> tuple[StallTimer, int]:
    mode = "sync" if sync else "async"
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"s3://{bucket}/{mode}-{r}"
        cfg = config(tmp, uri, endpoint, args.steps, args.interval, sync=sync)
        dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        trainer = Trainer(cfg, Runtime(), dist_info)
        timer = StallTimer()
        trainer.parts.callbacks.callbacks.append(timer)
        try:
            trainer.train()
            size = state_bytes(trainer)
        finally:
            trainer.close()
        timer.stalls.pop(args.steps, None)  # the final checkpoint, flushed at the end
        return timer, size


def checkpoint_bytes(endpoint: str, bucket: str) -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=bucket, Prefix="sync-0/").get("Contents", [])
    steps = {o["Key"].split("/")[1] for o in objects}
    return sum(int(o["Size"]) for o in objects) // max(1, len(steps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stalls: dict[str, list[float]] = {"sync": [], "async": []}
    steps: dict[str, list[float]] = {"sync": [], "async": []}
    first_async: list[float] = []
    later_async: list[float] = []
    snapshot_bytes = 0
    with tempfile.TemporaryDirectory() as work, running_minio(Path(work)) as server:
        os.environ.update(s3_env(server))
        bucket = new_bucket(server)
        for r in range(args.rounds):
            # Alternate which runs first, so drift in machine load favours neither.
            for sync in (True, False) if r % 2 == 0 else (False, True):
                mode = "sync" if sync else "async"
                timer, snapshot_bytes = run(server.endpoint, bucket, args, r, sync=sync)
                stalls[mode] += timer.stalls.values()
                steps[mode] += timer.steps
                if not sync:
                    ordered = [timer.stalls[step] for step in sorted(timer.stalls)]
                    first_async += ordered[:1]
                    later_async += ordered[1:]
                shown = ", ".join(f"{s * 1e3:.0f}" for s in timer.stalls.values())
                print(f"round {r + 1}/{args.rounds} {mode:5}: stalls ms [{shown}]", flush=True)
        size = checkpoint_bytes(server.endpoint, bucket)
    s, a = statistics.median(stalls["sync"]), statistics.median(stalls["async"])
    print(
        f"\nmodel d512 L4, checkpoint {size / 1e6:.0f} MB (model + AdamW + RNG), MinIO on "
        f"loopback, CPU threads {torch.get_num_threads()}, {len(stalls['sync'])} checkpoints each"
    )
    print(
        f"sync  stall: {s * 1e3:8.1f} ms (median), "
        f"step {statistics.median(steps['sync']) * 1e3:.0f} ms"
    )
    print(
        f"async stall: {a * 1e3:8.1f} ms (median), "
        f"step {statistics.median(steps['async']) * 1e3:.0f} ms"
    )
    print(f"ratio async/sync: {a / s:.3f}   (target <= 0.1)")
    if first_async and later_async:
        first, later = statistics.median(first_async), statistics.median(later_async)
        print(
            f"async stall, first checkpoint of a run (allocates the staging memory): "
            f"{first * 1e3:.1f} ms, ratio {first / s:.3f}"
        )
        print(
            f"async stall, later checkpoints (reuse it): {later * 1e3:.1f} ms, "
            f"ratio {later / s:.3f}"
        )
    print(f"extra RAM while async: {snapshot_bytes / 1e6:.0f} MB (one copy of model + AdamW)")


if __name__ == "__main__":
    main()
