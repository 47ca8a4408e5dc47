"""TextFileDataset: batches as a pure function of the step, sharding, epochs, eval, errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kubetrain_core import registry
from kubetrain_core.config.data import DataConfig
from kubetrain_trainer.data.text import TextFileDataset
from kubetrain_trainer.data.tokenizers import CharacterTokenizer, Tokenizer

CPU = torch.device("cpu")
SEQ = 8


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    # Random letters: every window of SEQ characters is (with overwhelming odds) unique,
    # so a window can be recognised by its content.
    rng = random.Random(7)
    path = tmp_path / "corpus.txt"
    path.write_text("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4000)))
    return path


def _dataset(path: Path, *, seed: int = 0, batch_size: int = 4, **data: object) -> TextFileDataset:
    cfg = DataConfig.model_validate(
        {"path": str(path), "seq_len": SEQ, "batch_size": batch_size} | data
    )
    return TextFileDataset(cfg, seed=seed)


def _batch(
    ds: TextFileDataset, step: int, *, micro: int = 0, rank: int = 0, world: int = 1, acc: int = 1
) -> dict[str, torch.Tensor]:
    return ds.train_batch(
        step, micro, rank=rank, world_size=world, accumulation_steps=acc, device=CPU
    )


def _rows(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row) for row in batch["input_ids"].tolist()]


def _train_windows(ds: TextFileDataset, path: Path) -> list[tuple[int, ...]]:
    """Every aligned training window, computed independently from the corpus text."""
    tokens = ds.tokenizer.encode(path.read_text())[: ds.split_tokens("train")]
    count = (len(tokens) - 1) // SEQ
    return [tuple(tokens[w * SEQ : (w + 1) * SEQ]) for w in range(count)]


def test_registry_name_points_at_the_class() -> None:
    assert registry.DATASET_ADAPTERS.get("text_file") is TextFileDataset


def test_batches_have_shifted_targets(corpus: Path) -> None:
    ds = _dataset(corpus)
    batch = _batch(ds, 3)
    assert batch["input_ids"].shape == batch["targets"].shape == (4, SEQ)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    windows = set(_train_windows(ds, corpus))
    assert set(_rows(batch)) <= windows


def test_splits_are_contiguous_and_cover_the_corpus(corpus: Path) -> None:
    ds = _dataset(corpus, splits={"train": 0.8, "val": 0.1, "test": 0.1})
    sizes = [ds.split_tokens(s) for s in ("train", "val", "test")]
    assert sum(sizes) == 4000
    assert sizes == [3200, 400, 400]
    assert ds.vocab_size == 27  # 26 letters + the unknown id


def test_batch_is_a_pure_function_of_its_arguments(corpus: Path) -> None:
    ds = _dataset(corpus, seed=5)
    first = _batch(ds, 17, micro=1, rank=1, world=2, acc=3)
    for step in range(5):  # unrelated calls in between leave no state behind
        _batch(ds, 100 + step)
    again = _batch(ds, 17, micro=1, rank=1, world=2, acc=3)
    fresh = _batch(_dataset(corpus, seed=5), 17, micro=1, rank=1, world=2, acc=3)
    for key in ("input_ids", "targets"):
        assert torch.equal(first[key], again[key])
        assert torch.equal(first[key], fresh[key])


def test_steps_and_seeds_change_the_batch(corpus: Path) -> None:
    ds = _dataset(corpus, seed=5)
    assert not torch.equal(_batch(ds, 0)["input_ids"], _batch(ds, 1)["input_ids"])
    other_seed = _dataset(corpus, seed=6)
    assert not torch.equal(_batch(ds, 0)["input_ids"], _batch(other_seed, 0)["input_ids"])


def test_one_epoch_visits_every_window_once(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=1)
    windows = _train_windows(ds, corpus)
    assert len(set(windows)) == len(windows)  # precondition: windows are recognisable
    assert ds.steps_per_epoch(1, 1) == len(windows)
    seen = [row for step in range(len(windows)) for row in _rows(_batch(ds, step))]
    assert sorted(seen) == sorted(windows)
    assert seen != windows  # shuffled, not in corpus order
    second = [
        row for step in range(len(windows), 2 * len(windows)) for row in _rows(_batch(ds, step))
    ]
    assert sorted(second) == sorted(windows)
    assert second != seen  # each epoch has its own order


def test_no_window_repeats_within_an_epoch_across_ranks_and_micro_batches(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=3)
    world, acc = 2, 2
    steps = ds.steps_per_epoch(world, acc)
    assert steps == len(_train_windows(ds, corpus)) // (3 * world * acc)
    seen = [
        row
        for step in range(steps)
        for micro in range(acc)
        for rank in range(world)
        for row in _rows(_batch(ds, step, micro=micro, rank=rank, world=world, acc=acc))
    ]
    assert len(seen) == steps * 3 * world * acc
    assert len(set(seen)) == len(seen)


def test_ranks_get_disjoint_shards(corpus: Path) -> None:
    ds = _dataset(corpus)
    for step in range(5):
        shards = [set(_rows(_batch(ds, step, rank=r, world=4))) for r in range(4)]
        assert sum(len(s) for s in shards) == len(set().union(*shards)) == 16


def test_big_batch_equals_the_union_of_accumulated_micro_batches(corpus: Path) -> None:
    # Gradient-accumulation equivalence: batch B*k with accumulation 1 holds exactly the
    # samples of the k micro-batches of size B with accumulation k (and across ranks).
    big = _dataset(corpus, batch_size=12)
    small = _dataset(corpus, batch_size=3)
    for step in (0, 7, 50):
        whole = _batch(big, step)
        parts = [
            _batch(small, step, micro=m, rank=r, world=2, acc=2) for m in range(2) for r in range(2)
        ]
        for key in ("input_ids", "targets"):
            assert torch.equal(whole[key], torch.cat([p[key] for p in parts]))


def test_micro_batch_straddling_an_epoch_boundary(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=5)
    windows = set(_train_windows(ds, corpus))
    # Pick the step whose samples cross from epoch 0 into epoch 1.
    step = len(windows) // 5
    assert ds.epoch_at(step, world_size=1, accumulation_steps=1) < 1.0
    assert ds.epoch_at(step + 1, world_size=1, accumulation_steps=1) > 1.0
    rows = _rows(_batch(ds, step))
    assert len(rows) == 5
    assert set(rows) <= windows


def test_epoch_accounting(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=4)
    n_windows = len(_train_windows(ds, corpus))
    assert ds.epoch_at(0, world_size=2, accumulation_steps=3) == 0.0
    assert ds.epoch_at(10, world_size=2, accumulation_steps=3) == pytest.approx(
        10 * 4 * 2 * 3 / n_windows
    )
    assert ds.steps_per_epoch(2, 3) == n_windows // 24
    assert _dataset(corpus, batch_size=4096).steps_per_epoch(1, 1) == 1  # never zero


def test_eval_batches_are_sequential_windows_sharded_by_rank(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=4, splits={"train": 0.8, "val": 0.1, "test": 0.1})
    tokens = ds.tokenizer.encode(corpus.read_text())
    start = ds.split_tokens("train")
    val = tokens[start : start + ds.split_tokens("val")]
    expected = [tuple(val[w * SEQ : (w + 1) * SEQ]) for w in range((len(val) - 1) // SEQ)]

    single = [
        r for b in ds.eval_batches("val", 1000, rank=0, world_size=1, device=CPU) for r in _rows(b)
    ]
    assert single == expected  # every window once, in corpus order

    per_rank = [
        list(ds.eval_batches("val", 1000, rank=r, world_size=3, device=CPU)) for r in range(3)
    ]
    rows = [{r for b in batches for r in _rows(b)} for batches in per_rank]
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == len(expected)
    # Deterministic: asking again gives the same tensors.
    again = list(ds.eval_batches("val", 1000, rank=1, world_size=3, device=CPU))
    assert all(
        torch.equal(a["targets"], b["targets"]) for a, b in zip(again, per_rank[1], strict=True)
    )


def test_eval_respects_max_batches_and_empty_splits(corpus: Path) -> None:
    ds = _dataset(corpus, batch_size=2, splits={"train": 0.9, "val": 0.1, "test": 0.0})
    assert len(list(ds.eval_batches("val", 3, rank=0, world_size=1, device=CPU))) == 3
    assert ds.split_tokens("test") == 0
    assert list(ds.eval_batches("test", 3, rank=0, world_size=1, device=CPU)) == []


def test_a_given_tokenizer_is_used_instead_of_training_one(corpus: Path, tmp_path: Path) -> None:
    trained = _dataset(corpus)
    saved = tmp_path / "tokenizer.json"
    trained.tokenizer.save(saved)
    cfg = DataConfig(path=str(corpus), seq_len=SEQ, batch_size=4)
    resumed = TextFileDataset(cfg, seed=0, tokenizer=Tokenizer.load(saved))
    assert torch.equal(_batch(trained, 9)["input_ids"], _batch(resumed, 9)["input_ids"])
    narrow = CharacterTokenizer(list("abc"))
    with_narrow = TextFileDataset(cfg, seed=0, tokenizer=narrow)
    assert with_narrow.tokenizer is narrow
    assert with_narrow.vocab_size == 4


def test_bpe_tokenizer_from_the_config(corpus: Path) -> None:
    ds = _dataset(corpus, tokenizer={"kind": "bpe", "vocab_size": 280})
    assert 256 < ds.vocab_size <= 280
    batch = _batch(ds, 0)
    assert int(batch["input_ids"].max()) < ds.vocab_size


def test_out_of_range_arguments_are_rejected(corpus: Path) -> None:
    ds = _dataset(corpus)
    with pytest.raises(ValueError, match="micro"):
        _batch(ds, 0, micro=2, acc=2)
    with pytest.raises(ValueError, match="rank"):
        _batch(ds, 0, rank=2, world=2)
    with pytest.raises(ValueError, match="step"):
        _batch(ds, -1)


def test_missing_and_empty_files_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.path: .* does not exist"):
        _dataset(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"data\.path: .* is empty"):
        _dataset(empty)


def test_split_too_small_for_one_window_names_seq_len(corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.seq_len .*val split"):
        _dataset(corpus, splits={"train": 0.998, "val": 0.001, "test": 0.001})
    with pytest.raises(ValueError, match=r"data\.seq_len .*train split"):
        TextFileDataset(DataConfig(path=str(corpus), seq_len=4000), seed=0)
