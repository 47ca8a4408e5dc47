"""TrainingJobs that break (or keep) one rule each: the cases both sides are tested on.

Each CEL rule the CRD carries mirrors a Python validator (core/kubetrain_core/cel.py).
tests/unit/test_validation_cases.py runs every case through the pydantic models
(`kubetrain validate`, `kubetrain run`, the operator); tests/e2e/test_validation_e2e.py
through a real API server (`kubectl apply --dry-run=server`). Both must agree on the
verdict, and both messages must contain `says`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainingjob.yaml"


class _Delete:
    """A change that removes the key (one object, however often the case is copied)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delete:
        return self


DELETE = _Delete()


@dataclass(frozen=True)
class Case:
    id: str
    change: dict[str, Any]  # merged into the example TrainingJob
    says: str | None  # None: valid; else a phrase both refusals contain
    name: str = field(default="case")

    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        job["metadata"]["name"] = self.name
        _merge(job, copy.deepcopy(self.change))
        return job


def _merge(base: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if value is DELETE:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _spec(**spec: Any) -> dict[str, Any]:
    return {"spec": spec}


def _trainer(**trainer: Any) -> dict[str, Any]:
    return _spec(trainer=trainer)


HF_SCRATCH = {"adapter": "hf_causal_lm", "hf_config": {"model_type": "llama", "hidden_size": 64}}
HF_BASE = {"adapter": "hf_causal_lm", "pretrained": "/models/base"}
GPUS = "exceeds the nvidia.com/gpu requested per node"

CASES = [
    Case("valid", {}, None),
    Case("heads", _trainer(model={"d_model": 100, "n_heads": 3}), "divisible by n_heads"),
    Case("splits", _trainer(data={"splits": {"train": 0.8}}), "train + val + test must be 1.0"),
    Case(
        "betas",
        _trainer(optimization={"optimizer": {"betas": [0.9, 1.0]}}),
        "each beta must be in [0, 1)",
    ),
    Case("no-length", _trainer(training={"max_steps": DELETE}), "max_steps or training.num_epochs"),
    Case("epochs-instead", _trainer(training={"max_steps": DELETE, "num_epochs": 1.5}), None),
    Case(
        "fsdp-fp16",
        _trainer(training={"parallelism": "fsdp", "precision": "fp16"}),
        "fsdp does not do: use bf16",
    ),
    Case("fsdp-bf16", _trainer(training={"parallelism": "fsdp", "precision": "bf16"}), None),
    Case("seq-len", _trainer(data={"seq_len": 256}), "exceeds model.max_seq_len"),
    Case(
        "hf-model-sets-its-own-length",
        _trainer(model=HF_SCRATCH, data={"seq_len": 256}),
        None,
    ),
    Case(
        "pretrained-and-config",
        _trainer(model={**HF_SCRATCH, "pretrained": "/models/base"}),
        "set model.pretrained or model.hf_config, not both",
    ),
    Case(
        "chat-needs-hf-tokenizer",
        _trainer(data={"adapter": "chat_jsonl", "tokenizer": {"kind": "char"}}),
        "needs a Hugging Face tokenizer",
    ),
    Case("lora", _trainer(model={**HF_BASE, "lora": {"r": 8}}), None),
    Case(
        "lora-needs-a-base",
        _trainer(model={**HF_SCRATCH, "lora": {"r": 8}}),
        "model.lora adapts a pretrained model",
    ),
    Case(
        "quantization-needs-lora",
        _trainer(model={**HF_BASE, "quantization": {"bits": 4}}),
        "only LoRA can then train",
    ),
    Case(
        "quantized-base-not-sharded",
        _trainer(
            model={**HF_BASE, "lora": {"r": 8}, "quantization": {"bits": 4}},
            training={"parallelism": "fsdp"},
        ),
        "cannot be sharded by training.parallelism fsdp",
    ),
    Case(
        "metrics-on-chat",
        _trainer(
            model=HF_BASE,
            data={"adapter": "chat_jsonl", "tokenizer": {"kind": "auto"}},
            evaluation={"metrics": ["bleu"]},
        ),
        None,
    ),
    Case(
        "metrics-need-references",
        _trainer(evaluation={"metrics": ["bleu", "rouge"]}),
        "score generated answers against the records' own",
    ),
    Case(
        "beams-need-hf",
        _trainer(evaluation={"num_beams": 4}),
        "beam search) needs an hf_* model",
    ),
    Case(
        "quality-needs-field",
        _trainer(data={"min_quality_score": 0.5}),
        "needs data.quality_field",
    ),
    Case("rdzv-port", _spec(monitoring={"port": 29400}), "rendezvous port"),
    Case(
        "gpu-limit",
        _spec(numProcPerNode=4, resources={"limits": {"nvidia.com/gpu": 2}}),
        GPUS,
    ),
    Case(
        "gpu-request",
        _spec(numProcPerNode=4, resources={"requests": {"nvidia.com/gpu": "2"}}),
        GPUS,
    ),
    Case(
        "gpu-request-beside-limits",
        _spec(
            numProcPerNode=4,
            resources={"requests": {"nvidia.com/gpu": 2}, "limits": {"memory": "4Gi"}},
        ),
        GPUS,
    ),
    Case("gpus-fit", _spec(numProcPerNode=2, resources={"limits": {"nvidia.com/gpu": 2}}), None),
    Case("no-gpus", _spec(numProcPerNode=2, resources={"limits": {"nvidia.com/gpu": 0}}), None),
    Case(
        "reserved-label",
        _spec(template={"metadata": {"labels": {"kubetrain.io/attempt": "9"}}}),
        "template.metadata.labels",
    ),
    Case(
        "label-key",
        _spec(template={"metadata": {"labels": {"no spaces": "x"}}}),
        "qualified name",
    ),
    Case(
        "reserved-annotation",
        _spec(template={"metadata": {"annotations": {"kubetrain.io/x": "y"}}}),
        "template.metadata.annotations",
    ),
    Case(
        "reserved-env",
        _spec(env=[{"name": "KUBETRAIN_RESTART_COUNT", "value": "0"}]),
        "is set by the operator or torchrun",
    ),
    Case(
        "s3-settings-on-file",
        _spec(checkpoint={"uri": "file:///shared/ckpt", "s3": {"endpoint": "http://minio:9000"}}),
        "apply to s3:// URIs only",
    ),
    Case("s3-settings", _spec(checkpoint={"uri": "s3://bucket/x", "s3": {"region": "eu-1"}}), None),
    Case(
        "trainer-checkpoint",
        _trainer(checkpoint={"interval_steps": 5}),
        "set in spec.checkpoint",
    ),
    Case("trainer-metrics-port", _trainer(metrics={"port": 9100}), "spec.monitoring.port"),
    Case("trainer-run-dir", _trainer(run_dir="/data/run"), "chooses the run dir"),
    Case("renamed-lr-scale", _trainer(recovery={"lr_scale": 0.5}), "lr_scale"),
    Case("lr-scale-percent", _trainer(recovery={"lr_scale_percent": 50}), None),
    Case("name-too-long", {}, "at most 52 characters", name="x" * 53),
]
