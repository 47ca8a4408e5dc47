"""Checkpoint upload and download throughput: the checkpoint storage vs boto3's TransferManager.

    python benchmarks/s3_throughput.py [--rounds 5] [--random] [--json]
    python benchmarks/s3_throughput.py --quick      # small random files, 1 round: does it run?

One process starts a real MinIO on loopback (the test harness's `running_minio`) and
makes one file set like a real checkpoint directory: what a 2-rank save writes for the
native Transformer (d_model 512, 6 layers) + AdamW after one step, by a real DCP save
of 2 gloo ranks (dcp/__0_0.distcp, dcp/__1_0.distcp, dcp/.metadata, trainer_state.pt,
rng-rank{0,1}.pt) plus a tokenizer.json and the config, ~230 MB in all (`--random`:
the same layout in random bytes). Then rounds, alternating which side goes first:

- ours: the product path. Upload = `CheckpointManager.save()` of the directory through
  `RetryingStorage(open_storage(...))` as the trainer builds it: sha256 of every file,
  upload, the manifest commit (and the rotation scan). Download = the `load()` inside
  the `start()` of a fresh manager resuming from that checkpoint: every file fetched,
  its size and sha256 checked. The whole resume (claims read, scan, next term claimed)
  is reported beside it.
- TransferManager: `boto3.s3.transfer.create_transfer_manager` with the default
  TransferConfig on a plain boto3 client, every file submitted at once, then waiting
  on the futures; the same files to and from the same MinIO; no hashing, no manifest.

MB/s is the file set's bytes (1 MB = 10^6 B) over wall time. The ratio is ours /
TransferManager per round (above 1: ours faster); the median and range over rounds
are reported, with the CPU seconds of this process (all threads) and of MinIO. Every
prefix is deleted after its round (untimed).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubetrain_core.checkpoints.storage import open_storage
from kubetrain_core.config.schema import S3Config
from kubetrain_trainer.checkpoint import CheckpointManager, ResumeRequest, RetryingStorage
from localkube.s3 import new_bucket, running_minio, s3_env
from localkube.services import MinioServer, free_port

MB = 1e6
Job = Callable[[], object]


# ---- the file set -------------------------------------------------------------------


def _dcp_rank(rank: int, spec: dict[str, Any]) -> None:
    """One rank of a real DCP save (a child process): the model + AdamW after one step."""
    import torch
    import torch.distributed as dist

    from kubetrain_core.config.model import ModelConfig
    from kubetrain_trainer.checkpoint.state import write_state
    from kubetrain_trainer.models.transformer import Transformer

    world, out = spec["world"], spec["out"]
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{spec['port']}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(
            d_model=spec["d_model"], n_layers=spec["n_layers"], n_heads=8, max_seq_len=64
        )
        model = Transformer(cfg, vocab_size=96)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.randint(0, 96, (2, 16))).sum().backward()
        optimizer.step()
        write_state(Path(out) / f"rank{rank}", model, optimizer, {"step": 1}, rank)
    finally:
        dist.destroy_process_group()


def dcp_file_set(root: Path, d_model: int, n_layers: int) -> None:
    """What 2 ranks stage for one checkpoint, merged into one directory `root`."""
    work = root.parent / "ranks"
    spec = {"world": 2, "port": free_port(), "out": str(work), "d_model": d_model}
    spec["n_layers"] = n_layers
    ranks = [
        subprocess.Popen([sys.executable, __file__, "--dcp-rank", str(r), json.dumps(spec)])
        for r in range(2)
    ]
    if any(p.wait(timeout=600) for p in ranks):
        raise SystemExit("the DCP save of the file set failed")
    for rank_dir in sorted(work.iterdir()):
        for path in rank_dir.rglob("*"):
            if path.is_file():
                target = root / path.relative_to(rank_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
    shutil.rmtree(work)
    _small_files(root)


def random_file_set(root: Path, shard_bytes: int) -> None:
    """The same layout in random bytes: two shards and the small files."""
    for rank in (0, 1):
        _write_random(root / "dcp" / f"__{rank}_0.distcp", shard_bytes)
        _write_random(root / f"rng-rank{rank}.pt", 14_000)
    _write_random(root / "dcp" / ".metadata", 96_000)
    _write_random(root / "trainer_state.pt", 1_300)
    _small_files(root)


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for start in range(0, size, 1 << 22):
            out.write(os.urandom(min(1 << 22, size - start)))


def _small_files(root: Path) -> None:
    # A BPE tokenizer's JSON (vocab + merges) and the trainer config, as rank 0 writes.
    vocab = {f"tok{i:05d}": i for i in range(32_000)}
    merges = [f"t{i} o{i}" for i in range(31_000)]
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab, "merges": merges}}))
    (root / "kubetrain-config.yaml").write_text("model:\n  d_model: 512\n" * 60)


def file_set(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


# ---- measuring -----------------------------------------------------------------------


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the MinIO process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall seconds, this process's CPU seconds (all threads) and MinIO's, per kind."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.server_cpu: dict[str, list[float]] = {}

    @contextmanager
    def span(self, kind: str, *, collect: bool = True) -> Iterator[None]:
        # The garbage of the previous round (botocore clients are large object graphs)
        # is collected before, not during, the next measurement.
        if collect:
            gc.collect()
        cpu0, server0, t0 = time.process_time(), _server_cpu(self.pid), time.perf_counter()
        yield
        self.wall.setdefault(kind, []).append(time.perf_counter() - t0)
        self.cpu.setdefault(kind, []).append(time.process_time() - cpu0)
        self.server_cpu.setdefault(kind, []).append(_server_cpu(self.pid) - server0)


# ---- the two sides -------------------------------------------------------------------


def _manager(endpoint: str, bucket: str, prefix: str) -> CheckpointManager:
    uri = f"s3://{bucket}/{prefix}"
    storage = RetryingStorage(open_storage(uri, S3Config(endpoint=endpoint)))  # as the trainer
    return CheckpointManager(uri, storage=storage)


def ours_upload(endpoint: str, bucket: str, prefix: str, src: Path, scratch: Path) -> Job:
    manager = _manager(endpoint, bucket, prefix)
    manager.start(ResumeRequest(), scratch / "start")  # claims term 0 (untimed)
    return lambda: manager.save(10, src, {"val_loss": 1.0})


def ours_download(endpoint: str, bucket: str, prefix: str, dest: Path, meter: Meter) -> Job:
    """The resume (`start`), with its download + verify (`load`) measured on its own."""
    manager = _manager(endpoint, bucket, prefix)
    load = manager.load

    def timed_load(info: Any, local_dir: Path) -> Path:
        with meter.span("ours_down", collect=False):  # inside the resume's span
            return load(info, local_dir)

    manager.load = timed_load  # type: ignore[method-assign]

    def resume() -> None:
        loaded = manager.start(ResumeRequest(), dest)
        if loaded is None or loaded.info.step != 10:
            raise SystemExit(f"resume from {manager.uri} found {loaded}")

    return resume


def tm_upload(client: Any, bucket: str, prefix: str, src: Path, names: list[str]) -> Job:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    def upload() -> None:
        with create_transfer_manager(client, TransferConfig()) as manager:
            futures = [manager.upload(str(src / n), bucket, f"{prefix}/{n}") for n in names]
            for future in futures:
                future.result()

    return upload


def tm_download(client: Any, bucket: str, prefix: str, dest: Path, names: list[str]) -> Job:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    def download() -> None:
        with create_transfer_manager(client, TransferConfig()) as manager:
            futures = []
            for name in names:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download(bucket, f"{prefix}/{name}", str(dest / name)))
            for future in futures:
                future.result()

    return download


def _delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    keys = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", [])]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})


# ---- rounds ------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


KINDS = ("ours_up", "tm_up", "ours_down", "tm_down")


def measure(server: MinioServer, src: Path, work: Path, rounds: int) -> dict[str, Any]:
    import boto3

    sizes = file_set(src)
    names = sorted(sizes)
    total = sum(sizes.values())
    bucket = new_bucket(server)
    client = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
    assert server.process.pid is not None
    meter = Meter(server.process.pid)
    for r in range(rounds):
        sides = ("ours", "tm") if r % 2 == 0 else ("tm", "ours")
        for side in sides:
            prefix = f"{side}-{r}-{secrets.token_hex(3)}"
            scratch = work / prefix
            scratch.mkdir()
            if side == "ours":
                save = ours_upload(server.endpoint, bucket, prefix, src, scratch)
                with meter.span("ours_up"):
                    save()
                resume = ours_download(server.endpoint, bucket, prefix, scratch / "resume", meter)
                with meter.span("ours_resume"):
                    resume()
            else:
                upload = tm_upload(client, bucket, prefix, src, names)
                with meter.span("tm_up"):
                    upload()
                download = tm_download(client, bucket, prefix, scratch / "down", names)
                with meter.span("tm_down"):
                    download()
            shutil.rmtree(scratch)
            _delete_prefix(client, bucket, prefix)
        shown = ", ".join(f"{k} {total / MB / meter.wall[k][-1]:.0f}" for k in KINDS)
        log(f"round {r + 1}/{rounds} ({' > '.join(sides)}): MB/s {shown}")
    result: dict[str, Any] = {
        "files": len(names),
        "bytes": total,
        "largest_file_bytes": max(sizes.values()),
        "rounds": rounds,
        "cpus": os.cpu_count(),
    }
    for way, short in (("upload", "up"), ("download", "down")):
        ours = [total / MB / s for s in meter.wall[f"ours_{short}"]]
        tm = [total / MB / s for s in meter.wall[f"tm_{short}"]]
        ratios = [o / t for o, t in zip(ours, tm, strict=True)]
        result[f"{way}_ours_mbps"] = statistics.median(ours)
        result[f"{way}_tm_mbps"] = statistics.median(tm)
        result[f"{way}_ratio"] = statistics.median(ratios)
        result[f"{way}_ratio_range"] = [min(ratios), max(ratios)]
        result[f"{way}_ours_round_mbps"] = ours
        result[f"{way}_tm_round_mbps"] = tm
        for side in ("ours", "tm"):
            kind = f"{side}_{short}"
            result[f"{way}_{side}_client_cpu_s"] = statistics.median(meter.cpu[kind])
            result[f"{way}_{side}_server_cpu_s"] = statistics.median(meter.server_cpu[kind])
    resumes, loads = meter.wall["ours_resume"], meter.wall["ours_down"]
    result["resume_ms"] = statistics.median(resumes) * 1e3
    result["resume_overhead_ms"] = (
        statistics.median([a - d for a, d in zip(resumes, loads, strict=True)]) * 1e3
    )
    return result


def report(result: dict[str, Any]) -> None:
    print(
        f"{result['files']} files ({result['file_set']}), {result['bytes'] / MB:.1f} MB (largest "
        f"{result['largest_file_bytes'] / MB:.1f} MB), MinIO on loopback, {result['rounds']} "
        f"rounds, {result['cpus']} CPUs, load average {result['load_before']:.2f} -> "
        f"{result['load_after']:.2f}"
    )
    for way in ("upload", "download"):
        low, high = result[f"{way}_ratio_range"]
        print(
            f"{way:8s} ours {result[f'{way}_ours_mbps']:7.1f} MB/s   TransferManager "
            f"{result[f'{way}_tm_mbps']:7.1f} MB/s   ratio {result[f'{way}_ratio']:.3f} "
            f"(rounds {low:.3f}-{high:.3f})"
        )
        print(
            f"{'':9s}CPU s, client / MinIO: ours {result[f'{way}_ours_client_cpu_s']:.2f} / "
            f"{result[f'{way}_ours_server_cpu_s']:.2f}   TransferManager "
            f"{result[f'{way}_tm_client_cpu_s']:.2f} / {result[f'{way}_tm_server_cpu_s']:.2f}"
        )
    print(
        f"resume  {result['resume_ms']:.0f} ms in all (start(): the download above plus "
        f"{result['resume_overhead_ms']:.0f} ms to pick the checkpoint and claim the next term)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small random files, 1 round")
    parser.add_argument(
        "--random", action="store_true", help="random bytes in the DCP layout (no torch save)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dcp-rank", nargs=2, help=argparse.SUPPRESS)  # a child: RANK SPEC
    args = parser.parse_args(argv)
    if args.dcp_rank:
        _dcp_rank(int(args.dcp_rank[0]), json.loads(args.dcp_rank[1]))
        return
    log(f"$ python benchmarks/s3_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    if args.quick:
        args.rounds = 1
    make: Callable[[Path], None]
    if args.quick:
        make = lambda root: random_file_set(root, 4_000_000)  # noqa: E731
    elif args.random:
        make = lambda root: random_file_set(root, 114_000_000)  # noqa: E731
    else:
        make = lambda root: dcp_file_set(root, d_model=512, n_layers=6)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "staging"
        src.mkdir()
        make(src)
        load_before = os.getloadavg()[0]
        with running_minio(work / "minio") as server:
            os.environ.update(s3_env(server))
            result = measure(server, src, work, args.rounds)
        result["load_before"] = load_before
        result["load_after"] = os.getloadavg()[0]
        result["file_set"] = "random" if args.quick or args.random else "dcp"
    if args.json:
        print(json.dumps(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
