"""A small Transformer (GPT-2 shape: pre-LayerNorm, learned positions): a decoder, or
with ``model.causal: false`` an encoder whose positions see the whole sequence (for
masked language modelling).

Attention goes through ``scaled_dot_product_attention`` so that CUDA picks a
flash or memory-efficient kernel and the CPU a fused one, with no code here
that depends on the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn
from torch.utils.checkpoint import checkpoint

from kubetrain_core.config.model import ModelConfig

_INIT_STD = 0.02


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.causal = cfg.causal
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # [B, T, 3D] -> three [B, H, T, D/H]
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        y = y.transpose(1, 2).reshape(b, t, d)
        out: torch.Tensor = self.resid_dropout(self.proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_ff = cfg.d_ff if cfg.d_ff is not None else 4 * cfg.d_model
        self.fc = nn.Linear(cfg.d_model, d_ff)
        self.proj = nn.Linear(d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.proj(F.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        out: torch.Tensor = x + self.mlp(self.ln_mlp(x))
        return out


class Transformer(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, T, vocab_size]``: of the next token (causal),
    or of the token at each position (an encoder)."""

    # transformers' name for the modules that must stay whole: fsdp shards per Block.
    _no_split_modules = ("Block",)

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.max_seq_len = cfg.max_seq_len
        self.gradient_checkpointing = cfg.gradient_checkpointing
        # How many blocks the forward runs (None: all): a model grown stack by stack
        # (strategy progressive) goes from the embeddings through its first blocks to the head.
        self.depth: int | None = None
        # The blocks a `hidden` given to forward has been through (a progressive run's
        # cached frozen trunk): the forward goes on from the next one.
        self.hidden_blocks = 0
        # Every this many blocks, while training, the stream is read out (final norm, head)
        # and cut from the blocks above (strategy end_to_end stackwise: each stack learns
        # from its own loss); None: only the last block's output is.
        self.read_out_every: int | None = None
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: residual writes scaled so the stream's variance stays O(1) with depth.
        residual_std = _INIT_STD / math.sqrt(2 * cfg.n_layers)
        for block in self.blocks:
            assert isinstance(block, Block)
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=_INIT_STD)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        _, t = input_ids.shape
        if t > self.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds model.max_seq_len ({self.max_seq_len})")
        positions = torch.arange(t, device=input_ids.device)
        x: torch.Tensor = self.dropout(self.tok_emb(input_ids) + self.pos_emb(positions))
        return x

    def trunk(self, input_ids: torch.Tensor, blocks: int) -> torch.Tensor:
        """The stream after the embeddings and the first `blocks` blocks."""
        x = self.embed(input_ids)
        for block in self.blocks[:blocks]:
            x = block(x)
        return x

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden`: the stream after the first `hidden_blocks` blocks, when a frozen
        trunk's output was cached; the forward goes on from there."""
        start = self.hidden_blocks if hidden is not None else 0
        x = hidden if hidden is not None else self.embed(input_ids)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        every = self.read_out_every if self.training else None
        outputs = []
        for i, block in enumerate(self.blocks[: self.depth]):
            if i < start:
                continue
            # Non-reentrant checkpointing restores the RNG, so dropout masks match on recompute.
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if every and (i + 1) % every == 0:
                outputs.append(x)
                x = x.detach()
        if outputs:  # [stacks, B, T, vocab]
            return torch.stack([self.head(self.ln_f(out)) for out in outputs])
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits

    def num_parameters(self, *, exclude_position_embedding: bool = False) -> int:
        """Distinct parameters (a tied head counts once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_position_embedding:
            total -= self.pos_emb.weight.numel()
        return total
