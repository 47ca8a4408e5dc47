"""`kubetrain run`: a TrainingJob without a cluster.

The gang becomes one torchrun in standalone mode with the job's total process
count; after each attempt the same pure policy the operator uses decides to
finish, fail, restart, or ask the trainer to roll back to an older checkpoint.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kubetrain_core.api import TrainingJob
from kubetrain_core.config import to_yaml
from kubetrain_core.contract import Env, ExitCode, TerminationMessage
from kubetrain_core.job_config import trainer_config
from kubetrain_core.policy import RecoveryState, classify, decide, record


def signing_key(run_dir: Path) -> str:
    """The run dir's manifest signing key, made on the first run (readable by you only)."""
    path = run_dir / "checkpoint.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def run_local(job: TrainingJob, runs_root: Path = Path("runs"), from_scratch: bool = False) -> int:
    """Train `job` here; `from_scratch` starts a new timeline beside the old checkpoints."""
    name = job.metadata.name
    run_dir = (runs_root / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if from_scratch:
        job = job.model_copy(deep=True)
        job.spec.checkpoint.resume = False
    key = signing_key(run_dir)
    config_path = run_dir / "trainer.yaml"
    uri = job.spec.checkpoint.uri or str(run_dir / "checkpoints")
    cfg = trainer_config(job, run_dir=str(run_dir), checkpoint_uri=uri)
    config_path.write_text(to_yaml(cfg))
    nproc = job.spec.numNodes * job.spec.procs_per_node()
    termination = run_dir / "termination-log.json"
    state = RecoveryState()
    print(f"kubetrain run: {name}: {nproc} process(es), run dir {run_dir}", flush=True)
    while True:
        termination.unlink(missing_ok=True)
        env = {
            **os.environ,
            **{e["name"]: str(e.get("value", "")) for e in job.spec.env if "name" in e},
            Env.JOB_NAME: name,
            Env.NAMESPACE: job.metadata.namespace or "local",
            Env.RESTART_COUNT: str(state.restarts["total"]),
            Env.SKIP_BATCHES: state.skip_batches,
            Env.LR_SCALE: str(state.lr_scale),
            Env.TERMINATION_LOG: str(termination),
            Env.CHECKPOINT_KEY: key,
        }
        for var in (Env.ROLLBACK_BEFORE, Env.ROLLBACK_ID):
            env.pop(var, None)
        if state.rollback is not None:
            env[Env.ROLLBACK_BEFORE] = str(state.rollback.before_step)
            env[Env.ROLLBACK_ID] = state.rollback.id
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nproc}", "-m", "kubetrain_trainer", "train", "--config",
            str(config_path),
        ]  # fmt: skip
        code = subprocess.call(command, env=env)
        message = (
            TerminationMessage.from_json(termination.read_text()) if termination.exists() else None
        )
        cause = classify(code, message)
        decision = decide(job.spec.faultTolerance, state, cause, message, uuid.uuid4().hex)
        print(f"kubetrain run: {decision.reason}: {decision.message}", flush=True)
        if decision.action == "succeed":
            return 0
        if decision.action == "fail":
            return int(ExitCode.CONFIG_INVALID if decision.reason == "ConfigInvalid" else 1)
        state = record(state, decision)
        time.sleep(min(2 ** state.restarts["total"], 30) / 4)  # short backoff: the gang is local
