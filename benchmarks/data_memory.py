"""A rank's memory against the size of its corpus: the token cache against text_file.

For each corpus size (records of generated text, `--sizes` thousands of records) one
fresh process builds the jsonl_text cache, then a fresh process per adapter opens the
corpus and reads `--batches` training batches, as a rank does, and reports its peak
RSS. The baseline is text_file, the same text as one file, tokenised whole into RAM
on every rank. The tokenizer is the same pretrained one for both (made by
examples/make_base_model.py), so neither trains anything.

    make benchmark NAME=data_memory ARGS="--sizes 20 80 320"

Prints peak RSS per size and adapter, and each adapter's growth from the smallest
corpus to the largest (the cache's should stay near zero; text_file's grows with it).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "a", "cat", "dog", "sun", "moon", "ran", "saw", "big", "small", "happy"]


def write_corpus(directory: Path, thousands: int) -> tuple[Path, Path]:
    rng = random.Random(thousands)
    texts = [" ".join(rng.choices(WORDS, k=40)) + "." for _ in range(thousands * 1000)]
    jsonl, text = directory / "corpus.jsonl", directory / "corpus.txt"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text.write_text("\n".join(texts) + "\n")
    return jsonl, text


def child(adapter: str, path: str, tokenizer: str, cache: str, batches: int) -> dict[str, Any]:
    """Runs in a fresh process: open the corpus as a rank does, read batches, report
    peak RSS and the private memory (RssAnon: mapped files, which the kernel may drop
    and ranks share, are not in it)."""
    import torch

    from kubetrain_core.config.data import DataConfig
    from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
    from kubetrain_trainer.data.records import PackedTextDataset
    from kubetrain_trainer.data.text import TextFileDataset

    tok = PretrainedTokenizer.from_directory(Path(tokenizer))
    cfg = DataConfig.model_validate(
        {"adapter": adapter, "path": path, "seq_len": 128, "batch_size": 8, "cache_dir": cache,
         "tokenizer": {"kind": "pretrained", "path": tokenizer}}
    )  # fmt: skip
    cls = PackedTextDataset if adapter == "jsonl_text" else TextFileDataset
    data = cls(cfg, seed=0, tokenizer=tok)
    cpu = torch.device("cpu")
    for step in range(batches):
        data.train_batch(step, 0, rank=0, world_size=1, accumulation_steps=1, device=cpu)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "private": int(status["RssAnon"].split()[0]) / 1024,
    }


def measure(
    adapter: str, path: Path, tokenizer: Path, cache: Path, batches: int
) -> tuple[float, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import data_memory as m; "
        "print(json.dumps(m.child(*sys.argv[2:6], int(sys.argv[6]))))"
    )
    here = str(Path(__file__).parent)
    args = [here, adapter, str(path), str(tokenizer), str(cache), str(batches)]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return float(found["peak"]), float(found["private"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 80, 320])
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        root = Path(tmp)
        sys.path.insert(0, str(REPO / "examples"))
        import make_base_model  # type: ignore[import-not-found]  # a script, on the path above

        tokenizer = make_base_model.make(root / "model", "llama")
        rows: list[tuple[int, tuple[float, float], tuple[float, float], int]] = []
        for size in args.sizes:
            folder = root / f"corpus-{size}"
            folder.mkdir()
            jsonl, text = write_corpus(folder, size)
            cache = root / "cache"
            measure("jsonl_text", jsonl, tokenizer, cache, 1)  # build the cache first
            cached = measure("jsonl_text", jsonl, tokenizer, cache, args.batches)
            whole = measure("text_file", text, tokenizer, cache, args.batches)
            rows.append((size, cached, whole, text.stat().st_size))
    print(f"one rank reading {args.batches} batches, MiB: peak RSS / private (RssAnon)")
    print(f"{'records':>9} {'corpus MiB':>11} {'token cache':>15} {'text_file':>15}")
    for size, cached, whole, nbytes in rows:
        print(
            f"{size * 1000:>9} {nbytes / 2**20:>11.1f} {cached[0]:>7.0f} / {cached[1]:<5.0f} "
            f"{whole[0]:>7.0f} / {whole[1]:<5.0f}"
        )
    (_, c0, w0, b0), (_, c1, w1, b1) = rows[0], rows[-1]
    print(
        f"growth for +{(b1 - b0) / 2**20:.0f} MiB of text: token cache {c1[0] - c0[0]:+.0f} "
        f"MiB peak, {c1[1] - c0[1]:+.0f} MiB private; text_file {w1[0] - w0[0]:+.0f} MiB "
        f"peak, {w1[1] - w0[1]:+.0f} MiB private"
    )


if __name__ == "__main__":
    main()
