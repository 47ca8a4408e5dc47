"""Where a TrainingJob's job-level settings meet its trainer config: the one place.

The result is the document every worker reads (the operator's ConfigMap, the run
dir's trainer.yaml under `kubetrain run`): the pods get their config by that one
channel, never by environment overrides of it.
"""

from __future__ import annotations

from kubetrain_core.api import CHECKPOINT_FIELDS, TrainingJob
from kubetrain_core.config import CheckpointConfig, S3Config, TrainingConfig


def trainer_config(
    job: TrainingJob,
    *,
    run_dir: str,
    checkpoint_uri: str,
    s3_endpoint: str | None = None,
    metrics_port: int | None = None,
) -> TrainingConfig:
    """spec.trainer with spec.checkpoint as its checkpoint section. `checkpoint_uri` is
    where this job's checkpoints go (the caller resolves defaults), `s3_endpoint` the
    endpoint to use when the job names none, `metrics_port` where rank 0 serves (None:
    nowhere)."""
    cfg = job.spec.trainer.model_copy(deep=True)
    cfg.run_dir = run_dir
    ckpt = job.spec.checkpoint
    cfg.checkpoint = CheckpointConfig(
        uri=checkpoint_uri,
        s3=S3Config(endpoint=ckpt.s3.endpoint or s3_endpoint, region=ckpt.s3.region),
        **{snake: getattr(ckpt, camel) for camel, snake in CHECKPOINT_FIELDS.items()},
    )
    if metrics_port is not None:
        cfg.metrics.port = metrics_port
    if job.spec.elastic is not None:  # every size of the gang trains the largest one's batch
        cfg.optimization.global_batch_ranks = job.spec.numNodes * job.spec.procs_per_node()
    return cfg
