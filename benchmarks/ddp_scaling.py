"""Data-parallel scaling of the kubetrain trainer: 1 process against 2, on the workload
of `peers.py --model native`, with a fixed batch per process (weak scaling).

    python benchmarks/ddp_scaling.py [--steps 40] [--warmup 10] [--rounds 3] [--json]
    python benchmarks/ddp_scaling.py --quick       # 1 round of 12 steps: does it run?

Each run is what `kubetrain run` starts for a job of N processes: torchrun in
standalone mode through the trainer's launcher (`python -m kubetrain_trainer.launch
--standalone --nnodes=1 --nproc-per-node=N -m kubetrain_trainer train --config FILE`),
so the process group, DDP wrapping, the sampler's per-rank batches and the loss
all-reduce are the trainer's own code: gloo on CPU, NCCL when CUDA is available (one GPU
per process; `--device auto` picks CUDA when there are at least 2 GPUs). The config is
peers.py's native one (Transformer d128 L2, 16 x 128 tokens per process and step,
AdamW, cosine schedule, clipping at 1.0) with metrics.jsonl written every step.

A step's time is the trainer's own: rank 0's `tokens_per_second` of a step in
metrics.jsonl is the step's tokens (all ranks) over the gap between two step ends,
and DDP's all-reduce ties the ranks' steps together. Steps after `--warmup` count;
rounds alternate which process count runs first. Printed (and with `--json` one
JSON object): median ms/step and tokens/s for 1 and 2 processes, and the scaling
efficiency tokens_per_s(2) / (2 * tokens_per_s(1)), 1.0 being perfect.

On a 2-core machine this is informational: with `--threads 1` (the default: one
core per process, as one GPU per process) 2 processes take both cores, so anything
else running on the machine and the gloo all-reduce of the gradients (over loopback
TCP) come out of the same two cores. The same script runs on a machine with GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # run as a script, the module beside it is importable by its own name
    from benchmarks import peers_runners as bench
else:
    import peers_runners as bench

PROCS = (1, 2)


def launch_command(nproc: int, config: Path) -> list[str]:
    """The gang `kubetrain run` starts (cli/kubetrain_cli/local_run.py)."""
    return [
        sys.executable, "-m", "kubetrain_trainer.launch", "--standalone", "--nnodes=1",
        f"--nproc-per-node={nproc}", "-m", "kubetrain_trainer", "train", "--config", str(config),
    ]  # fmt: skip


def resolve_device(wanted: str) -> str:
    """`auto`: CUDA when every process can have a GPU of its own, else CPU."""
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.device_count() >= max(PROCS) else "cpu"


def run_once(nproc: int, args: argparse.Namespace, device: str, root: Path) -> dict[str, Any]:
    """One gang of `nproc` processes; rank 0's step times (s) after the warmup."""
    run_dir = root / f"run-{nproc}-{len(list(root.iterdir()))}"
    cfg = bench.config_dict("native", args.steps, str(run_dir))
    cfg["data"]["batch_size"] = args.batch_size
    cfg["training"]["device"] = device
    cfg["metrics"]["log_steps"] = 1  # a line per step: each step's time
    run_dir.mkdir(parents=True)
    config = run_dir / "trainer.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETRAIN_")}
    env["OMP_NUM_THREADS"] = str(args.threads)  # torchrun keeps a value that is set
    command = launch_command(nproc, config)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{nproc} process(es) failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r.get("kind") == "train"]
    tokens = nproc * args.batch_size * bench.SEQ_LEN  # every rank's, as the trainer counts
    times = [tokens / r["tokens_per_second"] for r in steps if r["step"] > args.warmup]
    return {"times": times, "final_loss": steps[-1]["loss"], "command": command}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    times: dict[int, list[float]] = {n: [] for n in PROCS}
    round_ms: dict[int, list[float]] = {n: [] for n in PROCS}
    commands: dict[int, str] = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kubetrain-ddp-") as tmp:
        for r in range(args.rounds):
            order = PROCS if r % 2 == 0 else PROCS[::-1]
            for nproc in order:
                got = run_once(nproc, args, device, Path(tmp))
                times[nproc] += got["times"]
                round_ms[nproc].append(statistics.median(got["times"]) * 1e3)
                commands[nproc] = shlex.join(got["command"])
            shown = ", ".join(f"{n} process(es) {round_ms[n][-1]:.2f}" for n in PROCS)
            print(f"round {r + 1}/{args.rounds}: ms/step {shown}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
        "batch_per_process": args.batch_size, "seq_len": bench.SEQ_LEN,
        "threads_per_process": args.threads, "device": device,
        "backend": "nccl" if device == "cuda" else "gloo",
        "command": f"OMP_NUM_THREADS={args.threads} {commands[2]}",
        "benchmark_command": shlex.join(["python", *sys.argv]),
    }  # fmt: skip
    for n in PROCS:
        ms = statistics.median(times[n]) * 1e3
        result[f"ms_per_step_{n}"] = ms
        result[f"round_ms_{n}"] = round_ms[n]
        result[f"tokens_per_s_{n}"] = n * args.batch_size * bench.SEQ_LEN / (ms / 1e3)
    result["scaling_efficiency"] = result["tokens_per_s_2"] / (2 * result["tokens_per_s_1"])
    per_round = [a / b for a, b in zip(round_ms[1], round_ms[2], strict=True)]
    result["scaling_efficiency_range"] = [min(per_round), max(per_round)]
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def report(result: dict[str, Any]) -> None:
    print(
        f"kubetrain trainer, native Transformer d128 L2, {result['batch_per_process']} x "
        f"{result['seq_len']} tokens per process, {result['device']} ({result['backend']}),"
        f" {result['threads_per_process']} thread(s) per process; {result['rounds']} rounds x"
        f" {result['steps'] - result['warmup']} timed steps; load {result['load_before']:.2f}"
        f" -> {result['load_after']:.2f}"
    )
    for n in PROCS:
        spread = result[f"round_ms_{n}"]
        print(
            f"{n} process(es): {result[f'ms_per_step_{n}']:8.2f} ms/step (rounds "
            f"{min(spread):.2f}-{max(spread):.2f}), {result[f'tokens_per_s_{n}']:9.0f} tokens/s"
        )
    low, high = result["scaling_efficiency_range"]
    print(
        f"scaling efficiency tokens/s(2) / (2 x tokens/s(1)): "
        f"{result['scaling_efficiency']:.3f} (rounds {low:.3f}-{high:.3f})"
    )
    print(f"command: {result['command']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=bench.BATCH, help="per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="1 round of 12 steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 12, 4, 1
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
