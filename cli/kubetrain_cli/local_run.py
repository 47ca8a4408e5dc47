"""`kubetrain run`: a TrainingJob without a cluster.

The gang becomes one torchrun in standalone mode with the job's total process
count; after each attempt the same pure policy the operator uses decides to
finish, fail, restart, or ask the trainer to roll back to an older checkpoint.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kubetrain_core.api import TrainingJob
from kubetrain_core.config import ConfigError, TrainingConfig, parse_config, to_yaml
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


def preflight(cfg: TrainingConfig) -> list[str]:
    """Config problems that would stop every rank at start: plugins that do not import,
    missing data, a model directory that is not there."""
    from kubetrain_trainer.preflight import problems

    try:
        parse_config(cfg.model_dump(mode="json"), plugins="import")
    except ConfigError as err:
        return err.errors
    return problems(cfg)


def stop(gang: subprocess.Popen[bytes], termination: Path, again: str) -> int:
    """SIGTERM the gang (it saves a checkpoint and exits); a second Ctrl-C kills it."""
    print("\nkubetrain run: stopping: the workers save a checkpoint (Ctrl-C again to kill)")
    os.killpg(gang.pid, signal.SIGTERM)
    try:
        gang.wait()
    except KeyboardInterrupt:
        os.killpg(gang.pid, signal.SIGKILL)
        gang.wait()
        print("kubetrain run: killed; the last committed checkpoint stands", file=sys.stderr)
        return 130
    message = last_word(termination)
    step = f" at step {message.step}" if message and message.step is not None else ""
    print(f"kubetrain run: stopped{step}; run {again} to resume from its checkpoint")
    return 130


def last_word(termination: Path) -> TerminationMessage | None:
    """The gang's termination message, if rank 0 wrote one."""
    return TerminationMessage.from_json(termination.read_text()) if termination.exists() else None


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_local(
    job: TrainingJob,
    runs_root: Path = Path("runs"),
    from_scratch: bool = False,
    again: str = "the same command",
) -> int:
    """Train `job` here; `from_scratch` starts a new timeline beside the old checkpoints.
    `again` is how the user resumes after stopping it (Ctrl-C or SIGTERM)."""
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
    problems = preflight(cfg)
    if problems:  # one message here, not one per rank and torchrun's traceback
        print(ConfigError(name, problems), file=sys.stderr)
        return 2  # as for a spec that does not validate
    config_path.write_text(to_yaml(cfg))
    nproc = job.spec.numNodes * job.spec.procs_per_node()
    termination = run_dir / "termination-log.json"
    state = RecoveryState()
    print(f"kubetrain run: {name}: {nproc} process(es), run dir {run_dir}", flush=True)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # stopped like Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
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
            sys.executable, "-m", "kubetrain_trainer.launch", "--standalone", "--nnodes=1",
            f"--nproc-per-node={nproc}", "-m", "kubetrain_trainer", "train", "--config",
            str(config_path),
        ]  # fmt: skip
        # Its own session: Ctrl-C reaches this process only, which stops the gang the
        # way a cluster does (SIGTERM: a checkpoint, then exit), with no tracebacks.
        gang = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            code = gang.wait()
        except KeyboardInterrupt:
            return stop(gang, termination, again)
        message = last_word(termination)
        cause = classify(code, message)
        decision = decide(job.spec.faultTolerance, state, cause, message, uuid.uuid4().hex)
        print(f"kubetrain run: {decision.reason}: {decision.message}", flush=True)
        if decision.action == "succeed":
            return 0
        if decision.action == "fail":
            return int(ExitCode.CONFIG_INVALID if decision.reason == "ConfigInvalid" else 1)
        state = record(state, decision)
        time.sleep(min(2 ** state.restarts["total"], 30) / 4)  # short backoff: the gang is local
