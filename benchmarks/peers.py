"""The kubetrain trainer against Hugging Face's Trainer, Lightning's Trainer and a plain
PyTorch loop: the same model, batches, optimizer, schedule, clipping and seed.

    python benchmarks/peers.py [--model native|hf] [--steps 40] [--warmup 10] [--rounds 6] [--json]
    python benchmarks/peers.py --quick          # 2 short rounds: does everything run?

`--model native` (the default): kubetrain's own Transformer, the same nn.Module handed
to every runner. `--model hf`: a tiny Llama from a transformers config, loaded by each
framework its usual way (kubetrain through its `hf_causal_lm` adapter from the config
inline, the others with AutoModelForCausalLM and labels = input_ids); the workload
and the runners are in peers_runners.py.

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
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # run as a script, the module beside it is importable by its own name
    from benchmarks import peers_runners as bench
else:
    import peers_runners as bench

RUNNERS = bench.RUNNERS
THREADS = 2
DESCRIBE = {
    "native": "native Transformer d128 L2 (char vocab)",
    "hf": "Llama d128 L2 from a transformers config (BPE vocab)",
}


def child(name: str, model: str, steps: int, warmup: int, cache_dir: str | None) -> None:
    """One runner in this process: prints one JSON line."""
    import torch

    torch.set_num_threads(THREADS)
    clock = bench.RUN[name](model, steps, cache_dir)
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


def _spawn(name: str, model: str, steps: int, warmup: int, cache_dir: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--runner", name, "--model", model, "--steps", str(steps),
           "--warmup", str(warmup), "--cache-dir", cache_dir]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(runners: list[str], model: str, steps: int, warmup: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of every runner, each in its own process; the hf model's token
    cache is built by the first child, into a directory that lives as long as this."""
    times: dict[str, list[float]] = {r: [] for r in runners}
    cpu: dict[str, list[float]] = {r: [] for r in runners}
    round_medians: dict[str, list[float]] = {r: [] for r in runners}
    rss: dict[str, float] = dict.fromkeys(runners, 0.0)
    losses: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="kubetrain-peers-") as cache_dir:
        for i in range(rounds):
            order = runners[i % len(runners) :] + runners[: i % len(runners)]
            for name in order:
                got = _spawn(name, model, steps, warmup, cache_dir)
                times[name] += got["times"]
                cpu[name] += got["cpu_times"]
                round_medians[name].append(statistics.median(got["times"]))
                rss[name] = max(rss[name], got["peak_rss_mib"])
                losses[name] = got["final_loss"]
            line = ", ".join(f"{n} {round_medians[n][-1] * 1e3:.2f}" for n in runners)
            print(f"round {i + 1}/{rounds} ({' > '.join(order)}): ms/step {line}", file=sys.stderr)
    result: dict[str, Any] = {"model": model, "steps": steps, "warmup": warmup,
                              "rounds": rounds, "threads": THREADS}  # fmt: skip
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
        f"{DESCRIBE[result['model']]}, batch {bench.BATCH} x {bench.SEQ_LEN} tokens, CPU,"
        f" {result['threads']} threads;"
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
    parser.add_argument("--model", choices=bench.MODELS, default="native")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--quick", action="store_true", help="2 rounds of 15 steps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)  # a child
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)  # a child: the token cache
    args = parser.parse_args()
    if args.runner:
        child(args.runner, args.model, args.steps, args.warmup, args.cache_dir)
        return
    if args.quick:
        args.steps, args.warmup, args.rounds = 15, 5, 2
    runners = args.runners.split(",")
    result = measure(runners, args.model, args.steps, args.warmup, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        report(result, runners)


if __name__ == "__main__":
    main()
