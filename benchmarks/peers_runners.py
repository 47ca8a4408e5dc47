"""The workload of benchmarks/peers.py and the four runners that train it: the kubetrain
trainer, transformers' Trainer, Lightning's Trainer and a plain PyTorch loop.

Two models (`--model`): `native`, kubetrain's own Transformer on the char-level corpus,
the same `nn.Module` handed to every runner; `hf`, a tiny Llama built from a
transformers config on the same corpus cut by a byte-level BPE, which each framework
loads its usual way (kubetrain: `model.adapter: hf_causal_lm` with the config inline,
as examples/pretrain-hf.yaml; the others: `AutoModelForCausalLM.from_config` and the
model's own loss, labels = input_ids). benchmarks/ddp_scaling.py reuses `config_dict`.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

MODELS = ("native", "hf")
CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "tiny_corpus.txt"
SEQ_LEN, BATCH = 128, 16
# The Hugging Face variant: a 2-layer Llama of width 128, as a transformers config.
# use_cache off for every runner (kubetrain's adapter turns it off for training; a
# KV cache built during a training forward is work no runner needs).
HF_CONFIG: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 256, "tie_word_embeddings": True, "use_cache": False,
}  # fmt: skip


def config_dict(
    model: str, steps: int, run_dir: str, cache_dir: str | None = None
) -> dict[str, Any]:
    """The one definition of the workload: kubetrain's config, which the others read.
    `cache_dir` is where the `hf` variant's token cache lives (default: kubetrain's)."""
    if model == "native":
        model_cfg: dict[str, Any] = {"d_model": 128, "n_layers": 2, "n_heads": 4,
                                     "max_seq_len": SEQ_LEN}  # fmt: skip
        data: dict[str, Any] = {"path": str(CORPUS)}
    else:  # as a user's YAML says it (examples/pretrain-hf.yaml)
        model_cfg = {"adapter": "hf_causal_lm", "hf_config": dict(HF_CONFIG)}
        data = {"adapter": "jsonl_text", "path": str(CORPUS),
                "tokenizer": {"kind": "bpe", "vocab_size": 1024}}  # fmt: skip
        if cache_dir is not None:
            data["cache_dir"] = cache_dir
    return {
        "run_dir": run_dir,
        "model": model_cfg,
        "data": {**data, "seq_len": SEQ_LEN, "batch_size": BATCH},
        "optimization": {
            "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
            "scheduler": {"name": "cosine", "warmup_steps": 10},
            "max_grad_norm": 1.0,
        },
        "training": {"max_steps": steps, "eval_steps": 10**6, "device": "cpu"},
        "checkpoint": {"interval_steps": 10**6, "resume": False},
        "metrics": {"console": False, "jsonl": True, "log_steps": 10},
    }


def trainer_config(model: str, steps: int, run_dir: str, cache_dir: str | None = None) -> Any:
    from kubetrain_core.config import parse_config

    return parse_config(config_dict(model, steps, run_dir, cache_dir))


class Workload:
    """Model, batches, optimizer and schedule built the same way for every runner, in
    the order kubetrain's build_components uses (seed, data, model): the same weights."""

    def __init__(self, model: str, steps: int, cache_dir: str | None) -> None:
        import torch

        from kubetrain_core.registry import DATASET_ADAPTERS, MODEL_ADAPTERS
        from kubetrain_trainer.optimization import build_optimizer, build_scheduler

        self.kind = model
        self.cfg = cfg = trainer_config(model, steps, "unused", cache_dir)
        torch.manual_seed(cfg.training.seed)
        data = DATASET_ADAPTERS.get(cfg.data.adapter)(cfg.data, seed=cfg.training.seed)
        cpu = torch.device("cpu")
        raw = [
            data.train_batch(s, 0, rank=0, world_size=1, accumulation_steps=1, device=cpu)
            for s in range(steps)
        ]
        if model == "native":
            self.model = MODEL_ADAPTERS.get("standard")(cfg.model, data.vocab_size).build_model()
            self.batches = raw
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            fields = {**HF_CONFIG, "vocab_size": data.vocab_size}
            config = AutoConfig.for_model(fields.pop("model_type"), **fields)
            self.model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, attn_implementation="sdpa"
            )
            # labels = input_ids, the model shifts them: the row of seq_len + 1 tokens
            # gives exactly kubetrain's 128 targets (one more input position, unused).
            self.batches = [self._hf_batch(b["input_ids"], b["targets"]) for b in raw]
        self.optimizer = build_optimizer(self.model, cfg.optimization.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimization.scheduler, steps)

    @staticmethod
    def _hf_batch(inputs: Any, targets: Any) -> dict[str, Any]:
        import torch

        row = torch.cat([inputs, targets[:, -1:]], dim=1)
        return {"input_ids": row, "labels": row}

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        if self.kind == "hf":
            return model(**batch).loss  # the model's own loss (ForCausalLMLoss)
        import torch.nn.functional as F  # noqa: N812

        logits = model(batch["input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())


class Clock:
    """Step-end timestamps; a step's time is the gap to the previous step's end. Also the
    process's CPU time (all threads) at each step end: it leaves out waiting for a core,
    but torch's OpenMP threads spin while they wait, so under contention it grows too."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.restart()

    def restart(self) -> None:
        self.ends, self.cpu_ends = [time.perf_counter()], [time.process_time()]

    def tick(self, loss: float | None = None) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        if loss is not None:
            self.losses.append(loss)

    def times(self, warmup: int) -> list[float]:
        return _gaps(self.ends)[warmup:]

    def cpu_times(self, warmup: int) -> list[float]:
        return _gaps(self.cpu_ends)[warmup:]


def _gaps(marks: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(marks)]


def run_plain(model: str, steps: int, cache_dir: str | None) -> Clock:
    """What a person writes from scratch (nanoGPT style)."""
    import torch

    work = Workload(model, steps, cache_dir)
    net, optimizer, scheduler = work.model, work.optimizer, work.scheduler
    net.train()
    clock = Clock()
    for batch in work.batches:
        loss = work.loss(net, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        clock.tick(loss.item())
    return clock


def run_kubetrain(model: str, steps: int, cache_dir: str | None) -> Clock:
    """kubetrain's Trainer from the config, as `kubetrain train` builds it (one process)."""
    import torch

    from kubetrain_trainer.callbacks import Callback, TrainerState
    from kubetrain_trainer.distributed import DistInfo
    from kubetrain_trainer.runtime import Runtime
    from kubetrain_trainer.trainer import Trainer

    clock = Clock()

    class StepEnd(Callback):
        def on_train_begin(self, state: TrainerState, **kwargs: Any) -> None:
            clock.restart()

        def on_batch_end(self, state: TrainerState, **kwargs: Any) -> None:
            clock.tick(state.metrics.get("loss"))

    with tempfile.TemporaryDirectory() as tmp:
        cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        trainer = Trainer(trainer_config(model, steps, tmp, cache_dir), Runtime(), cpu)
        trainer.parts.callbacks.callbacks.append(StepEnd())
        trainer.train()
        trainer.close()
    return clock


class _Steps:
    """Batch `i` of the workload at index `i` (a map-style dataset of whole batches)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


def run_hf_trainer(model: str, steps: int, cache_dir: str | None) -> Clock:
    """transformers' Trainer the usual way: the native model in a module returning
    {"loss"}, the HF model as it is (batches with labels); TrainingArguments, our
    optimizer and schedule passed in (optimizers=...), batches in order."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    work, clock = Workload(model, steps, cache_dir), Clock()
    losses: list[Any] = []  # read after training: no sync added per step

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = work.model

        def forward(self, input_ids: Any, targets: Any) -> dict[str, Any]:
            loss = work.loss(self.inner, {"input_ids": input_ids, "targets": targets})
            losses.append(loss.detach())
            return {"loss": loss}

    def keep_loss(module: Any, args: Any, output: Any) -> None:
        losses.append(output.loss.detach())

    net: torch.nn.Module = WithLoss() if model == "native" else work.model
    if model == "hf":
        net.register_forward_hook(keep_loss)

    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

    class StepEnd(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock.restart()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=1,
            max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=1234,
        )  # fmt: skip
        trainer = InOrder(
            model=net, args=args, train_dataset=cast(Any, _Steps(work.batches)),
            data_collator=lambda items: items[0],
            optimizers=(work.optimizer, cast(Any, work.scheduler)),
            callbacks=[StepEnd()],
        )  # fmt: skip
        trainer.train()
    clock.losses = [float(loss) for loss in losses]
    return clock


def run_lightning(model: str, steps: int, cache_dir: str | None) -> Clock:
    """Lightning the usual way: a LightningModule wrapping the model, with
    training_step and configure_optimizers, Trainer(max_steps, gradient_clip_val)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    work, clock = Workload(model, steps, cache_dir), Clock()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = work.model

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            loss = work.loss(self.inner, batch)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return {
                "optimizer": work.optimizer,
                "lr_scheduler": {"scheduler": work.scheduler, "interval": "step"},
            }

    class StepEnd(pl.Callback):
        def on_train_start(self, *args: Any) -> None:
            clock.restart()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
            clock.tick(float(outputs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=steps, accelerator="cpu", devices=1, gradient_clip_val=1.0,
            log_every_n_steps=10, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, logger=False, callbacks=[StepEnd()],
            default_root_dir=tmp, num_sanity_val_steps=0,
        )  # fmt: skip
        loader: DataLoader[Any] = DataLoader(cast(Any, _Steps(work.batches)), batch_size=None)
        trainer.fit(Module(), train_dataloaders=loader)
    return clock


RUN: dict[str, Callable[[str, int, str | None], Clock]] = {
    "plain": run_plain,
    "kubetrain": run_kubetrain,
    "hf_trainer": run_hf_trainer,
    "lightning": run_lightning,
}
RUNNERS = tuple(RUN)
