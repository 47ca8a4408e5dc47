"""The hf_causal_lm adapter, the pretrained tokenizer and the export, with real
transformers models built small from configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetrain_core.config import ConfigError, TrainingConfig, parse_config
from kubetrain_core.config.loading import resolve_paths
from kubetrain_core.config.model import ModelConfig
from kubetrain_trainer.checkpoint.state import CONFIG_FILE
from kubetrain_trainer.data.hf_tokenizer import PretrainedTokenizer
from kubetrain_trainer.data.tokenizers import CharacterTokenizer, Tokenizer
from kubetrain_trainer.export import NATIVE_TOKENIZER, write_export
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.models.hf import CausalLMAdapter, Seq2SeqLMAdapter
from kubetrain_trainer.optimization.losses import LanguageModelingLoss

LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def _model_cfg(**fields: Any) -> ModelConfig:
    return ModelConfig.model_validate({"adapter": "hf_causal_lm"} | fields)


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    tokens = torch.randint(0, vocab, (4, 17), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}


def test_a_model_from_an_inline_config_trains() -> None:
    adapter = CausalLMAdapter(_model_cfg(hf_config=LLAMA), vocab_size=50)
    model = adapter.build_model()
    assert model.get_input_embeddings().num_embeddings == 50  # vocab_size from the tokenizer
    loss_fn, batch = LanguageModelingLoss(), _batch(50)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = adapter.compute_loss(model, batch, loss_fn)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_a_pretrained_directory_loads_its_own_weights(
    arch: str, hf_base_model: Callable[[str], Path]
) -> None:
    directory = hf_base_model(arch)
    tokenizer = PretrainedTokenizer.from_directory(directory)
    adapter = CausalLMAdapter(_model_cfg(pretrained=str(directory)), tokenizer.vocab_size)
    model = adapter.build_model()
    reference = AutoModelForCausalLM.from_pretrained(str(directory))
    ids = torch.tensor([tokenizer.encode("Lily saw a cat.")])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    batch, grads = _batch(40, seed=1), []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        adapter = CausalLMAdapter(
            _model_cfg(hf_config=LLAMA, gradient_checkpointing=checkpointing), vocab_size=40
        )
        model = adapter.build_model()
        model.train()
        adapter.compute_loss(model, batch, LanguageModelingLoss()).backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
        assert model.is_gradient_checkpointing is checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_a_hub_id_that_is_not_cached_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    adapter = CausalLMAdapter(_model_cfg(pretrained="meta-llama/Llama-3.2-1B"), vocab_size=10)
    with pytest.raises(ConfigError) as err:
        adapter.build_model()
    text = str(err.value)
    assert "model.pretrained" in text and "never downloads" in text
    assert "save_pretrained directory" in text and "s3://" in text


def test_flash_attention_on_a_cpu_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: flash attention may work here")
    adapter = CausalLMAdapter(
        _model_cfg(hf_config=LLAMA, attn_implementation="flash_attention_2"), vocab_size=10
    )
    with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
        adapter.build_model()


def test_a_tokenizer_larger_than_the_embedding_is_refused(
    hf_base_model: Callable[[str], Path],
) -> None:
    adapter = CausalLMAdapter(_model_cfg(pretrained=str(hf_base_model("llama"))), 100_000)
    with pytest.raises(ConfigError, match="the tokenizer has 100000 tokens"):
        adapter.build_model()


def test_the_pretrained_tokenizer_survives_its_checkpoint_form(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    tokenizer = PretrainedTokenizer.from_directory(hf_base_model("llama"))
    tokenizer.save(tmp_path / "tokenizer.json")
    restored = Tokenizer.load(tmp_path / "tokenizer.json")
    assert isinstance(restored, PretrainedTokenizer)
    text = "<|im_start|>user\nHello there<|im_end|>"
    assert restored.encode(text) == tokenizer.encode(text)
    assert restored.hf.chat_template == tokenizer.hf.chat_template
    assert restored.vocab_size == tokenizer.vocab_size


def _training_config(**trainer: Any) -> TrainingConfig:
    base: dict[str, Any] = {"data": {"path": "corpus.txt"}, "training": {"max_steps": 1}}
    return parse_config({**base, **trainer})


def test_an_export_loads_with_plain_transformers(
    tmp_path: Path, hf_base_model: Callable[[str], Path]
) -> None:
    directory = hf_base_model("qwen2")
    cfg = _training_config(model={"adapter": "hf_causal_lm", "pretrained": str(directory)})
    tokenizer = PretrainedTokenizer.from_directory(directory)
    model = CausalLMAdapter(cfg.model, tokenizer.vocab_size).build_model()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(2.0)  # "trained": differs from the base
    out = write_export(model, tokenizer, cfg, tmp_path / "export")
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    loaded_tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = torch.tensor([loaded_tokenizer("a cat", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded_tokenizer.chat_template == tokenizer.hf.chat_template
    assert "hf_causal_lm" in (out / CONFIG_FILE).read_text()
    assert not list(tmp_path.glob(".export*"))  # written beside, then renamed into place


def test_the_native_model_exports_safetensors_and_its_config(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = _training_config(model={"d_model": 32, "n_heads": 4, "max_seq_len": 128})
    tokenizer = CharacterTokenizer(list("abc "))
    model = StandardModelAdapter(cfg.model, tokenizer.vocab_size).build_model()
    out = write_export(model, tokenizer, cfg, tmp_path / "export")
    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    config = json.loads((out / "config.json").read_text())
    assert config["d_model"] == 32 and config["vocab_size"] == tokenizer.vocab_size
    assert Tokenizer.load(out / NATIVE_TOKENIZER).encode("abc") == tokenizer.encode("abc")


def test_hf_config_rules() -> None:
    with pytest.raises(ValueError, match=r"needs model\.pretrained .* or model\.hf_config"):
        _model_cfg()
    with pytest.raises(ValueError, match=r"model\.hf_config needs a model_type"):
        _model_cfg(hf_config={"hidden_size": 8})
    with pytest.raises(ValueError, match=r"set model\.adapter: hf_causal_lm"):
        ModelConfig(pretrained="/models/m")


def test_the_tokenizer_defaults_to_the_models_own(tmp_path: Path) -> None:
    (tmp_path / "models" / "base").mkdir(parents=True)
    cfg = _training_config(model={"adapter": "hf_causal_lm", "pretrained": "models/base"})
    assert cfg.data.tokenizer.kind == "pretrained"
    assert cfg.data.tokenizer.path == "models/base"
    resolve_paths(cfg, tmp_path)  # relative to the config file, like the data
    assert cfg.model.pretrained == cfg.data.tokenizer.path == str(tmp_path / "models" / "base")
    scratch = _training_config(model={"adapter": "hf_causal_lm", "hf_config": LLAMA})
    assert scratch.data.tokenizer.kind == "char"  # auto, with no pretrained model
    cached_id = _training_config(model={"adapter": "hf_causal_lm", "pretrained": "org/name"})
    resolve_paths(cached_id, tmp_path)  # not a directory there: a hub id, left alone
    assert cached_id.model.pretrained == "org/name"


T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_heads": 4}


def test_an_encoder_decoder_from_an_inline_config_trains() -> None:
    adapter = Seq2SeqLMAdapter(_model_cfg(adapter="hf_seq2seq", hf_config=T5), vocab_size=60)
    model = adapter.build_model()
    assert type(model).__name__ == "T5ForConditionalGeneration"
    source = torch.randint(0, 60, (4, 10), generator=torch.Generator().manual_seed(0))
    targets = torch.flip(source, dims=[1])[:, :6]  # learn to write the input backwards
    targets[:, -1] = -100  # an ignored position, as padding is
    batch = {"input_ids": source, "attention_mask": torch.ones_like(source), "targets": targets}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = adapter.compute_loss(model, batch, LanguageModelingLoss())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
