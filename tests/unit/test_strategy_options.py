"""The finetune, pretrain_mlm and curriculum strategies' own pieces, on real models and
datasets: freezing and per-group learning rates, BERT's masking statistics, curriculum
stages and subsets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetrain_core.config import (
    ConfigError,
    DataConfig,
    MlmConfig,
    ModelConfig,
    OptimizationConfig,
    TrainingLoopConfig,
)
from kubetrain_trainer.data.text import TextFileDataset
from kubetrain_trainer.distributed import DistInfo
from kubetrain_trainer.models.adapters import StandardModelAdapter
from kubetrain_trainer.models.transformer import Transformer
from kubetrain_trainer.optimization.losses import LanguageModelingLoss
from kubetrain_trainer.optimization.optimizers import build_optimizer
from kubetrain_trainer.optimization.schedulers import build_scheduler, current_lr
from kubetrain_trainer.strategies.curriculum import CurriculumStrategy, truncate
from kubetrain_trainer.strategies.finetune import FinetuneStrategy, layers
from kubetrain_trainer.strategies.mlm import MaskedLMStrategy, mask_tokens

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "tiny_corpus.txt"
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _model(n_layers: int = 3) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(d_model=16, n_layers=n_layers, n_heads=2, max_seq_len=32), 40)


def _loop(**training: object) -> TrainingLoopConfig:
    return TrainingLoopConfig.model_validate({"max_steps": 10, **training})


# ---------------------------------------------------------------- finetune


def test_layers_number_embeddings_blocks_and_head() -> None:
    layer, blocks = layers(_model(3))
    assert blocks == 3
    assert layer["tok_emb.weight"] == 0 and layer["pos_emb.weight"] == 0
    assert layer["blocks.0.attn.qkv.weight"] == 1 and layer["blocks.2.mlp.fc.bias"] == 3
    assert layer["ln_f.weight"] == 4


def test_freezing_by_pattern_and_first_blocks() -> None:
    model = _model(3)
    loop = _loop(strategy="finetune", finetune={"freeze": ["*.ln_*"], "freeze_blocks": 1})
    FinetuneStrategy.configure_model(model, loop)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight"} <= frozen
    assert "blocks.2.ln_mlp.weight" in frozen  # by pattern
    assert "blocks.1.attn.qkv.weight" not in frozen and "ln_f.weight" not in frozen
    optimizer = build_optimizer(model, OptimizationConfig().optimizer)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in optimized for n, p in model.named_parameters() if n in frozen)


def test_frozen_weights_do_not_move_and_the_rest_do() -> None:
    model = _model(2)
    loop = _loop(strategy="finetune", finetune={"freeze_blocks": 1})
    FinetuneStrategy.configure_model(model, loop)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, OptimizationConfig().optimizer)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    LanguageModelingLoss(OptimizationConfig().loss)(model(ids[:, :-1]), ids[:, 1:]).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "blocks.0.attn.qkv.weight" not in moved and "blocks.1.attn.qkv.weight" in moved


def test_a_pattern_that_matches_nothing_names_the_field() -> None:
    loop = _loop(strategy="finetune", finetune={"freeze": ["encoder.*"]})
    with pytest.raises(ConfigError, match=r"training.finetune.freeze"):
        FinetuneStrategy.configure_model(_model(), loop)
    loop = _loop(strategy="finetune", finetune={"freeze_blocks": 9})
    with pytest.raises(ConfigError, match="the model has 3"):
        FinetuneStrategy.configure_model(_model(), loop)


def test_lr_scales_first_match_wins_and_layer_decay_multiplies() -> None:
    model = _model(2)
    loop = _loop(
        strategy="finetune",
        finetune={
            "lr_scales": [{"pattern": "ln_f.*", "scale": 2.0}, {"pattern": "*", "scale": 0.5}],
            "layer_lr_decay": 0.5,
        },
    )
    scales = FinetuneStrategy.lr_scales(model, loop)
    assert scales["ln_f.weight"] == pytest.approx(2.0)  # after the last block: decay^0
    assert scales["blocks.1.mlp.fc.weight"] == pytest.approx(0.5 * 0.5)  # block 2 of 2
    assert scales["blocks.0.mlp.fc.weight"] == pytest.approx(0.5 * 0.25)
    assert scales["tok_emb.weight"] == pytest.approx(0.5 * 0.125)  # decay^(N+1)

    cfg = OptimizationConfig()
    optimizer = build_optimizer(model, cfg.optimizer, scales)
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    for name, scale in scales.items():
        assert by_param[id(named[name])] == pytest.approx(cfg.optimizer.lr * scale), name
    decays = {g["weight_decay"] for g in optimizer.param_groups if g["lr_scale"] == 0.0625}
    assert decays == {cfg.optimizer.weight_decay}  # the embeddings stay in the decayed group
    scheduler = build_scheduler(optimizer, cfg.scheduler, 10)
    assert current_lr(scheduler) == pytest.approx(cfg.optimizer.lr)  # the schedule, unscaled
    scheduler.step()
    ratios = {g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert len({round(r, 12) for r in ratios}) == 1  # one schedule scales every group


# ---------------------------------------------------------------- masked LM


def test_masking_selects_15_percent_and_splits_80_10_10() -> None:
    vocab, mask_id = 1000, 1000
    ids = torch.randint(3, vocab, (64, 512), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1  # a special token at every row's start: never selected
    inputs, targets = mask_tokens(
        ids,
        MlmConfig(),
        generator=torch.Generator().manual_seed(7),
        mask_id=mask_id,
        vocab_size=vocab,
        ignore_index=-100,
        special_ids=[1],
    )
    selected = targets != -100
    n = int(selected.sum())
    assert abs(n / (ids.numel() - 64) - 0.15) < 0.005
    assert not selected[:, 0].any()
    assert torch.equal(targets[selected], ids[selected])  # the original token is the target
    masked = (inputs == mask_id) & selected
    kept = (inputs == ids) & selected
    random = selected & ~masked & ~kept
    assert abs(int(masked.sum()) / n - 0.8) < 0.01
    assert abs(int(random.sum()) / n - 0.1 * (1 - 1 / vocab)) < 0.01
    assert abs(int(kept.sum()) / n - (0.1 + 0.1 / vocab)) < 0.01
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes


def test_masking_selects_at_least_one_token() -> None:
    ids = torch.tensor([[5, 6]])
    for seed in range(50):
        _, targets = mask_tokens(
            ids,
            MlmConfig(mask_probability=0.01),
            generator=torch.Generator().manual_seed(seed),
            mask_id=9,
            vocab_size=9,
            ignore_index=-100,
        )
        assert (targets != -100).sum() >= 1


def _dataset(seq_len: int = 32, tokenizer: str = "char") -> TextFileDataset:
    cfg = DataConfig.model_validate(
        {"path": str(CORPUS), "seq_len": seq_len, "batch_size": 4, "tokenizer": {"kind": tokenizer}}
    )
    return TextFileDataset(cfg, seed=3)


def _strategy(cls: type, loop: TrainingLoopConfig, dataset: TextFileDataset) -> object:
    extra = cls.extra_tokens(loop, dataset.tokenizer)
    model_cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=64, causal=False)
    adapter = StandardModelAdapter(model_cfg, dataset.vocab_size + extra)
    model = adapter.build_model()
    cfg = OptimizationConfig()
    optimizer = build_optimizer(model, cfg.optimizer)
    return cls(
        model=model,
        adapter=adapter,
        dataset=dataset,
        loss_fn=LanguageModelingLoss(cfg.loss),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.scheduler, 10),
        cfg=cfg,
        loop=loop,
        dist_info=CPU,
    )


def test_the_mask_token_is_an_extra_id_after_a_char_vocabulary() -> None:
    dataset = _dataset()
    loop = _loop(strategy="pretrain_mlm")
    assert MaskedLMStrategy.extra_tokens(loop, dataset.tokenizer) == 1
    strategy = _strategy(MaskedLMStrategy, loop, dataset)
    assert isinstance(strategy, MaskedLMStrategy)
    batch = strategy.train_batch(3, 0)
    assert int(batch["input_ids"].max()) == dataset.vocab_size  # the mask id
    again = strategy.train_batch(3, 0)  # a pure function of the step: resume is exact
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert not torch.equal(batch["input_ids"], strategy.train_batch(4, 0)["input_ids"])
    assert strategy.evaluate("val", 2) == strategy.evaluate("val", 2)  # the same masks


# ---------------------------------------------------------------- curriculum


def test_truncate_cuts_only_per_position_tensors() -> None:
    batch = {"input_ids": torch.zeros(2, 8), "targets": torch.ones(2, 8), "other": torch.ones(2, 3)}
    cut = truncate(batch, 5)
    assert cut["input_ids"].shape == (2, 5) and cut["targets"].shape == (2, 5)
    assert cut["other"].shape == (2, 3)
    assert truncate(batch, None) is batch and truncate(batch, 8) is batch


def test_curriculum_stages_switch_at_their_steps() -> None:
    dataset = _dataset(seq_len=32)
    loop = _loop(
        strategy="curriculum",
        curriculum={
            "stages": [
                {"start_step": 0, "seq_len": 8, "data_fraction": 0.1},
                {"start_step": 3, "seq_len": 16},
                {"start_step": 6},
            ]
        },
    )
    strategy = _strategy(CurriculumStrategy, loop, dataset)
    assert isinstance(strategy, CurriculumStrategy)
    widths = [strategy.train_batch(step, 0)["input_ids"].shape[1] for step in range(8)]
    assert widths == [8, 8, 8, 16, 16, 16, 32, 32]
    # Stage 1 reads only the first tenth of the training windows; later stages all of them.
    subset = max(1, int(dataset.order.samples * 0.1))
    window = dataset._splits["train"]
    allowed = {tuple(window[i * 32 : i * 32 + 8].tolist()) for i in range(subset)}
    for step in range(3):
        rows = strategy.train_batch(step, 0)["input_ids"]
        assert {tuple(r.tolist()) for r in rows} <= allowed
    full = dataset.train_batch(7, 0, rank=0, world_size=1, accumulation_steps=1, device=CPU.device)
    assert torch.equal(strategy.train_batch(7, 0)["input_ids"], full["input_ids"])
