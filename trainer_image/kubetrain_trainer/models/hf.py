"""Hugging Face transformers models behind the model adapter interface.

The model comes from `model.pretrained` (a save_pretrained directory: local, s3:// or
a cached hub id) or is built from scratch from the inline `model.hf_config`. The
loss is kubetrain's (batches carry shifted targets with -100 where nothing is
learned), so label smoothing, masking and the NaN guard work as for the native model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kubetrain_core.config import ConfigError
from kubetrain_trainer.data.base import Batch
from kubetrain_trainer.models import lora
from kubetrain_trainer.models.adapters import Generation, ModelAdapter
from kubetrain_trainer.parallel import shard_units, unwrap
from kubetrain_trainer.pretrained import local_dir


class CausalLMAdapter(ModelAdapter):
    """Registry name ``hf_causal_lm``: any AutoModelForCausalLM architecture."""

    auto_class = "AutoModelForCausalLM"  # the transformers Auto class that builds it
    task_type: str | None = "CAUSAL_LM"  # peft's name for it (model.lora)

    def build_model(self) -> nn.Module:
        import transformers
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        auto = getattr(transformers, self.auto_class)
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # ours reports
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "attn_implementation": self._attention(),
            "dtype": getattr(torch, cfg.dtype),
        }
        model: nn.Module
        if cfg.pretrained is not None:
            directory = local_dir(cfg.pretrained, "model.pretrained")
            try:
                model = auto.from_pretrained(
                    str(directory),
                    local_files_only=True,
                    **kwargs,
                    **lora.quantization_kwargs(cfg),
                )
            except (OSError, ValueError) as err:
                raise ConfigError(
                    "model.pretrained", [f"{directory}: not a loadable {self.auto_class}: {err}"]
                ) from None
        else:
            fields = dict(cfg.hf_config or {})
            model_type = fields.pop("model_type")
            fields.setdefault("vocab_size", self.vocab_size)
            try:
                config = AutoConfig.for_model(model_type, **fields)
            except (ValueError, TypeError) as err:
                raise ConfigError("model.hf_config", [str(err)]) from None
            model = auto.from_config(config, **kwargs)
        self._check_vocabulary(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()  # type: ignore[operator]
            if cfg.lora is not None:  # frozen embeddings: recomputed blocks still need grads
                model.enable_input_require_grads()  # type: ignore[operator]
        model.config.use_cache = False  # type: ignore[union-attr]  # no KV cache in training
        return lora.wrap(model, cfg, self.task_type)

    def set_depth(self, model: nn.Module, blocks: int, cached: int = 0) -> None:
        """Blocks past the first `blocks` pass the hidden states through untouched
        (transformers 5's decoder blocks take them first and return them),
        so they cost nothing and take no gradient. A cached trunk needs the model to
        start after its blocks, which a transformers forward cannot."""
        if cached:
            raise ConfigError(
                "training.progressive.cache",
                [f"model.adapter {self.cfg.adapter!r} cannot start its forward after the"
                 " cached trunk: remove cache (the native transformer supports it)"],
            )  # fmt: skip
        for i, block in enumerate(shard_units(model)):
            if i < blocks:
                block.__dict__.pop("forward", None)  # its class's forward again
            else:
                setattr(block, "forward", _pass_through)  # noqa: B010 - an instance's method

    def _attention(self) -> str:
        wanted = self.cfg.attn_implementation
        if wanted == "flash_attention_2" and not torch.cuda.is_available():
            raise ConfigError(
                "model.attn_implementation",
                ["flash_attention_2 needs a CUDA GPU and the flash-attn package; use sdpa"],
            )
        return wanted

    def _check_vocabulary(self, model: nn.Module) -> None:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
        rows = int(embeddings.num_embeddings)
        if self.vocab_size > rows:
            raise ConfigError(
                "data.tokenizer",
                [
                    f"the tokenizer has {self.vocab_size} tokens but the model embeds only "
                    f"{rows}: use the model's own tokenizer, or a vocab_size >= "
                    f"{self.vocab_size} in model.hf_config"
                ],
            )

    def compute_loss(self, model: nn.Module, batch: Batch, loss_fn: nn.Module) -> torch.Tensor:
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        loss: torch.Tensor = loss_fn(out.logits, batch["targets"])
        return loss

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[list[int]], settings: Generation
    ) -> list[list[int]]:
        """transformers' `generate` (greedy or beam search) on the prompts, padded on the
        left so that every answer starts at the same column."""
        width = max(len(p) for p in prompts)
        pad = settings.pad_id
        ids = [[pad] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        out = self._generate(model, ids, mask, settings)
        return [settings.until_end(row[width:]) for row in out.tolist()]

    def _generate(
        self, model: nn.Module, ids: list[list[int]], mask: list[list[int]], settings: Generation
    ) -> torch.Tensor:
        device = settings.device
        output: torch.Tensor = model.generate(  # type: ignore[operator]
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            max_new_tokens=settings.max_new_tokens,
            num_beams=settings.num_beams,
            do_sample=False,
            use_cache=True,
            pad_token_id=settings.pad_id,
            eos_token_id=settings.eos_id,
            synced_gpus=settings.synced,
        )
        return output


class Seq2SeqLMAdapter(CausalLMAdapter):
    """Registry name ``hf_seq2seq``: any AutoModelForSeq2SeqLM architecture (T5, BART...).
    The decoder reads the targets shifted right, as the model itself prepares them."""

    auto_class = "AutoModelForSeq2SeqLM"
    set_depth = ModelAdapter.set_depth  # an encoder and a decoder: not one rack
    task_type = "SEQ_2_SEQ_LM"

    def build_model(self) -> nn.Module:
        model = super().build_model()
        config: Any = model.config
        if getattr(config, "decoder_start_token_id", None) is None:  # a config from scratch
            config.decoder_start_token_id = getattr(config, "pad_token_id", None) or 0
        return model

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[list[int]], settings: Generation
    ) -> list[list[int]]:
        """The encoder reads each prompt (padded on the right, masked); the decoder's
        answer follows its start token."""
        width = max(len(p) for p in prompts)
        ids = [p + [settings.pad_id] * (width - len(p)) for p in prompts]
        mask = [[1] * len(p) + [0] * (width - len(p)) for p in prompts]
        out = self._generate(model, ids, mask, settings)
        return [settings.until_end(row[1:]) for row in out.tolist()]

    def compute_loss(self, model: nn.Module, batch: Batch, loss_fn: nn.Module) -> torch.Tensor:
        targets = batch["targets"]
        prepare = unwrap(model).prepare_decoder_input_ids_from_labels  # hidden by DDP
        decoder_input_ids = prepare(labels=targets)  # type: ignore[operator]
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            decoder_input_ids=decoder_input_ids,
        )
        loss: torch.Tensor = loss_fn(out.logits, targets)
        return loss


class MaskedLMAdapter(CausalLMAdapter):
    """Registry name ``hf_masked_lm``: any AutoModelForMaskedLM architecture (BERT,
    RoBERTa...), trained by the pretrain_mlm strategy, whose batches carry the masked
    inputs and the original tokens as targets at the selected positions."""

    auto_class = "AutoModelForMaskedLM"
    # BERT lists its embeddings among its blocks (_no_split_modules): no rack of stacks
    set_depth = ModelAdapter.set_depth
    task_type = None  # peft has no masked-LM task: a plain PeftModel

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[list[int]], settings: Generation
    ) -> list[list[int]]:
        raise ConfigError(
            "evaluation.metrics", ["a masked LM fills in tokens; it does not generate text"]
        )


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states
