"""Tokenizers: round trips, unknown characters, save/load, determinism of training."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetrain_core import registry
from kubetrain_core.config.data import TokenizerConfig
from kubetrain_trainer.data.tokenizers import (
    BPETokenizer,
    CharacterTokenizer,
    Tokenizer,
    build_tokenizer,
)

CORPUS = (
    "The quick brown fox jumps over the lazy dog.\n"
    "A lazy dog sleeps in the warm sun, and the fox runs home.\n"
) * 40


def test_registry_names_point_at_the_tokenizer_classes() -> None:
    assert registry.TOKENIZERS.get("char") is CharacterTokenizer
    assert registry.TOKENIZERS.get("bpe") is BPETokenizer


def test_char_vocabulary_is_the_sorted_alphabet_plus_unknown() -> None:
    tok = CharacterTokenizer.train("cabbage", TokenizerConfig(kind="char"))
    assert tok.chars == ["a", "b", "c", "e", "g"]
    assert tok.vocab_size == 6
    ids = tok.encode("abc")
    assert ids == [1, 2, 3]
    assert all(0 <= i < tok.vocab_size for i in tok.encode("cabbage"))


def test_char_round_trip() -> None:
    tok = CharacterTokenizer.train(CORPUS, TokenizerConfig(kind="char"))
    assert tok.decode(tok.encode(CORPUS)) == CORPUS


def test_char_unknown_characters_map_to_the_reserved_id() -> None:
    tok = CharacterTokenizer.train("abc", TokenizerConfig(kind="char"))
    ids = tok.encode("aZb")
    assert ids[1] == CharacterTokenizer.UNK_ID
    assert CharacterTokenizer.UNK_ID not in (ids[0], ids[2])
    assert tok.decode(ids) == "a" + CharacterTokenizer.UNK_TEXT + "b"


def test_char_save_and_load(tmp_path: Path) -> None:
    tok = CharacterTokenizer.train(CORPUS + "é漢\t", TokenizerConfig(kind="char"))
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert isinstance(loaded, CharacterTokenizer)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode(CORPUS + "é漢\t") == tok.encode(CORPUS + "é漢\t")


def test_bpe_round_trip_including_unseen_characters() -> None:
    tok = build_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=300))
    assert isinstance(tok, BPETokenizer)
    text = "The lazy fox — naïve 漢字 🙂 tabs\tand\nnewlines"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(CORPUS)) == CORPUS


def test_bpe_learns_merges_within_the_requested_size() -> None:
    tok = BPETokenizer.train(CORPUS, TokenizerConfig(kind="bpe", vocab_size=300))
    # 256 byte symbols plus merges, never more than asked for.
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode(CORPUS)
    assert len(ids) < len(CORPUS.encode()) / 2  # merges compress the corpus they came from
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_bpe_training_is_deterministic() -> None:
    # Every rank trains its own tokenizer from the same corpus: they must agree.
    cfg = TokenizerConfig(kind="bpe", vocab_size=320)
    first = BPETokenizer.train(CORPUS, cfg)
    second = BPETokenizer.train(CORPUS, cfg)
    assert first.vocab_size == second.vocab_size
    assert first.encode(CORPUS) == second.encode(CORPUS)


def test_bpe_save_and_load(tmp_path: Path) -> None:
    tok = BPETokenizer.train(CORPUS, TokenizerConfig(kind="bpe", vocab_size=300))
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode(CORPUS) == tok.encode(CORPUS)
    assert BPETokenizer.load(path).encode("fox") == tok.encode("fox")


def test_load_rejects_garbage_and_the_wrong_class(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    with pytest.raises(ValueError, match="not a saved tokenizer"):
        Tokenizer.load(garbage)
    saved = tmp_path / "char.json"
    CharacterTokenizer.train("abc", TokenizerConfig()).save(saved)
    with pytest.raises(ValueError, match="not a BPETokenizer"):
        BPETokenizer.load(saved)
