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


def _progressive(**options: Any) -> dict[str, Any]:
    """Strategy progressive with training.progressive's stage_steps and `options`."""
    progressive = {"stage_steps": 100, **options}
    return _trainer(training={"strategy": "progressive", "progressive": progressive})


def _time_steps(steps: int, fractions: dict[int, float]) -> dict[str, Any]:
    """pretrain_mlm on the native encoder with seed 003's time-step masking."""
    mlm = {"time_steps": {"num_time_steps": steps, "mask_fractions": fractions}}
    return _trainer(training={"strategy": "pretrain_mlm", "mlm": mlm}, model={"causal": False})


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
    Case(
        "finetune",
        _trainer(
            model=HF_BASE,
            training={
                "strategy": "finetune",
                "finetune": {"freeze_blocks": 1, "layer_lr_decay": 0.8},
            },
        ),
        None,
    ),
    Case(
        "finetune-changes-nothing",
        _trainer(training={"strategy": "finetune", "finetune": {}}),
        "training.finetune changes nothing",
    ),
    Case(
        "finetune-section-needs-strategy",
        _trainer(training={"finetune": {"layer_lr_decay": 0.8}}),
        "configures the finetune strategy",
    ),
    Case(
        "finetune-needs-section",
        _trainer(training={"strategy": "finetune"}),
        "needs its options in training.finetune",
    ),
    Case(
        "freeze-needs-base",
        _trainer(training={"strategy": "finetune", "finetune": {"freeze": ["tok_emb.*"]}}),
        "reload from model.pretrained",
    ),
    Case(
        "mlm-native",
        _trainer(model={"causal": False}, training={"strategy": "pretrain_mlm"}),
        None,
    ),
    Case(
        "mlm-bert",
        _trainer(
            model={"adapter": "hf_masked_lm", "hf_config": {"model_type": "bert"}},
            training={"strategy": "pretrain_mlm", "mlm": {"mask_probability": 0.2}},
        ),
        None,
    ),
    Case(
        "mlm-section-needs-strategy",
        _trainer(training={"mlm": {"mask_probability": 0.2}}),
        "configures the pretrain_mlm, progressive or end_to_end strategy",
    ),
    Case(
        "mlm-fractions",
        _trainer(
            model={"causal": False},
            training={"strategy": "pretrain_mlm", "mlm": {"random_fraction": 0.3}},
        ),
        "mask_fraction + random_fraction must be at most 1",
    ),
    Case(
        "mlm-needs-encoder",
        _trainer(training={"strategy": "pretrain_mlm"}),
        "needs a model that reads both sides",
    ),
    Case(
        "encoder-needs-mlm",
        _trainer(model={"causal": False}),
        "train them with training.strategy pretrain_mlm",
    ),
    Case(
        "causal-is-native",
        _trainer(model={**HF_BASE, "causal": False}),
        "makes the native transformer an encoder",
    ),
    Case(
        "mlm-reads-text",
        _trainer(
            model={"causal": False},
            data={"adapter": "seq2seq_jsonl", "tokenizer": {"kind": "pretrained", "path": "/t"}},
            training={"strategy": "pretrain_mlm"},
        ),
        "reads plain text",
    ),
    Case(
        "progressive",
        _progressive(),
        None,
    ),
    Case(
        "progressive-masked",
        _trainer(
            model={"causal": False},
            training={
                "strategy": "progressive",
                "progressive": {"stage_steps": 100, "trunk_strategy": "scaled_lr"},
                "mlm": {"time_steps": {"mask_fractions": {0: 0.15, 9: 0.9}}},
            },
        ),
        None,
    ),
    Case(
        "end-to-end-stackwise",
        _trainer(
            model={"causal": False},
            training={
                "strategy": "end_to_end",
                "end_to_end": {"scope": "stackwise", "blocks_per_stack": 1},
                "mlm": {"mask_probability": 0.2},
            },
        ),
        None,
    ),
    Case(
        "end-to-end-section-needs-strategy",
        _trainer(training={"end_to_end": {"scope": "stackwise"}}),
        "configures the end_to_end strategy",
    ),
    Case(
        "end-to-end-scope",
        _trainer(training={"strategy": "end_to_end", "end_to_end": {"scope": "blockwise"}}),
        "stackwise",
    ),
    Case(
        "progressive-cache-needs-frozen",
        _progressive(trunk_strategy="scaled_lr", cache={"max_mib": 64}),
        "only a frozen trunk keeps constant",
    ),
    Case(
        "progressive-quantised-trunk-adapters",
        _progressive(trunk_precision="bf16", trunk_adapters={"r": 4, "alpha": 8, "lr_scale": 2.0}),
        None,
    ),
    Case(
        "progressive-precision-needs-frozen",
        _progressive(trunk_strategy="scaled_lr", trunk_precision="fp16"),
        "which only a frozen trunk can be",
    ),
    Case(
        "progressive-adapters-need-frozen",
        _progressive(trunk_strategy="scaled_lr", trunk_adapters={"r": 4}),
        "adapt a frozen trunk",
    ),
    Case(
        "progressive-adapters-exclude-cache",
        _progressive(trunk_adapters={"r": 4}, cache={"max_mib": 64}),
        "cannot be cached",
    ),
    Case(
        "progressive-trunk-precision-kind",
        _progressive(trunk_precision="int3"),
        "bf16",
    ),
    Case(
        "progressive-needs-options",
        _trainer(training={"strategy": "progressive"}),
        "needs its options in training.progressive",
    ),
    Case(
        "progressive-section-needs-strategy",
        _trainer(training={"progressive": {"stage_steps": 100}}),
        "configures the progressive strategy",
    ),
    Case(
        "progressive-not-fsdp",
        _trainer(
            training={
                "strategy": "progressive",
                "progressive": {"stage_steps": 100},
                "parallelism": "fsdp",
            }
        ),
        "fsdp's shards cannot follow",
    ),
    Case(
        "progressive-mlm-needs-encoder",
        _trainer(
            training={
                "strategy": "progressive",
                "progressive": {"stage_steps": 100},
                "mlm": {"mask_probability": 0.2},
            }
        ),
        "needs a model that reads both sides",
    ),
    Case(
        "curriculum",
        _trainer(
            training={
                "strategy": "curriculum",
                "curriculum": {
                    "stages": [
                        {"start_step": 0, "seq_len": 64, "data_fraction": 0.5},
                        {"start_step": 100},
                    ]
                },
            }
        ),
        None,
    ),
    Case(
        "curriculum-needs-section",
        _trainer(training={"strategy": "curriculum"}),
        "needs its options in training.curriculum",
    ),
    Case(
        "curriculum-section-needs-strategy",
        _trainer(training={"curriculum": {"stages": [{"start_step": 0}]}}),
        "configures the curriculum strategy",
    ),
    Case(
        "curriculum-starts-at-0",
        _trainer(
            training={"strategy": "curriculum", "curriculum": {"stages": [{"start_step": 5}]}}
        ),
        "the first stage has start_step 0",
    ),
    Case(
        "curriculum-steps-increase",
        _trainer(
            training={
                "strategy": "curriculum",
                "curriculum": {"stages": [{"start_step": 0}, {"start_step": 9}, {"start_step": 9}]},
            }
        ),
        "start steps increase strictly",
    ),
    Case(
        "curriculum-stage-too-long",
        _trainer(
            training={
                "strategy": "curriculum",
                "curriculum": {"stages": [{"start_step": 0, "seq_len": 256}]},
            }
        ),
        "a stage's seq_len must be at most data.seq_len",
    ),
    Case(
        "best-by-bleu",
        _spec(checkpoint={"keepBest": 2, "bestMetric": "val_bleu", "bestMode": "max"}),
        None,
    ),
    Case("best-metric-name", _spec(checkpoint={"bestMetric": "bleu_score"}), "should match"),
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
        "kueue-label-in-template",
        _spec(template={"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q"}}}),
        "template.metadata.labels",
    ),
    Case(
        "kueue-annotation-in-template",
        _spec(
            template={"metadata": {"annotations": {"kueue.x-k8s.io/pod-group-total-count": "9"}}}
        ),
        "template.metadata.annotations",
    ),
    Case(
        "pod-group-label-in-template",
        _spec(template={"metadata": {"labels": {"scheduling.x-k8s.io/pod-group": "g"}}}),
        "template.metadata.labels",
    ),
    Case(
        "volcano-group-annotation-in-template",
        _spec(template={"metadata": {"annotations": {"scheduling.k8s.io/group-name": "g"}}}),
        "template.metadata.annotations",
    ),
    Case("gang", _spec(scheduling={"gang": {"podGroup": "Volcano", "volcanoQueue": "q"}}), None),
    Case("shm-size", _spec(shmSize="8Gi"), None),
    Case("shm-size-quantity", _spec(shmSize="eight gigs"), "shmSize"),
    Case("gang-kind", _spec(scheduling={"gang": {"podGroup": "YuniKorn"}}), "podGroup"),
    Case(
        "gang-timeout", _spec(scheduling={"gang": {"scheduleTimeoutSeconds": 0}}), "scheduleTimeout"
    ),
    Case("gang-queue", _spec(scheduling={"gang": {"volcanoQueue": "Not A Name"}}), "volcanoQueue"),
    Case("startup-restart", _spec(faultTolerance={"onStartupTimeout": "Restart"}), None),
    Case("time-step-masking", _time_steps(10, {0: 0.15, 9: 0.9}), None),
    Case("time-step-range", _time_steps(4, {0: 0.1, 7: 0.9}), "must be in [0, num_time_steps)"),
    Case("elastic", _spec(elastic={"minNodes": 1}, faultTolerance={"inPlaceRestarts": 2}), None),
    Case(
        "elastic-min",
        _spec(elastic={"minNodes": 2}, faultTolerance={"inPlaceRestarts": 2}),
        "minNodes must be below numNodes",
    ),
    Case("elastic-restarts", _spec(elastic={"minNodes": 1}), "inPlaceRestarts >= 1"),
    Case(
        "trainer-global-batch-ranks",
        _trainer(optimization={"global_batch_ranks": 4}),
        "optimization.global_batch_ranks",
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
    Case(
        "notifications",
        _spec(
            notifications={
                "webhook": {"secretRef": {"name": "kubetrain-notifications", "key": "slack"}},
                "format": "slack",
                "events": ["Failed", "Succeeded"],
            }
        ),
        None,
    ),
    Case(
        "notification-events-twice",
        _spec(notifications={"webhook": {}, "events": ["Failed", "Restarting", "Failed"]}),
        "each event at most once",
    ),
]
