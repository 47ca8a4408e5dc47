"""`kubetrain train`: one trainer process, mapping outcomes to the contract's exit codes."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from kubetrain_core.config import ConfigError, load_config
from kubetrain_core.contract import ExitCode, TerminationMessage
from kubetrain_trainer.runtime import Runtime

if TYPE_CHECKING:  # torch is imported only once the config is known to be good
    from kubetrain_trainer.trainer import Trainer

log = logging.getLogger("kubetrain")
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def train_main(config_path: Path, overrides: list[str]) -> int:
    try:
        runtime = Runtime.from_env()
    except ConfigError as err:
        print(err, file=sys.stderr)
        TerminationMessage("ConfigInvalid", str(err)).write(Runtime().termination_log)
        return ExitCode.CONFIG_INVALID
    try:
        # Plugins are imported here: one that cannot be is a config error naming its field.
        cfg = load_config(config_path, overrides, values=runtime.overrides, plugins="import")
    except ConfigError as err:
        print(err, file=sys.stderr)
        TerminationMessage("ConfigInvalid", str(err)).write(runtime.termination_log)
        return ExitCode.CONFIG_INVALID

    # Nothing is downloaded at run time: the Hugging Face libraries read local files only.
    os.environ.update(dict.fromkeys(OFFLINE, "1"))
    # torch is imported only once the config is known to be good.
    from kubetrain_trainer import distributed
    from kubetrain_trainer.checkpoint import Fenced, StoreConflict
    from kubetrain_trainer.metrics import print_summary
    from kubetrain_trainer.trainer import NaNUnrecoverable, Preempted, Trainer

    dist_info = distributed.init_distributed(
        cfg.training.device, cfg.training.process_group_timeout_seconds
    )
    logging.basicConfig(
        level=logging.INFO if dist_info.is_main else logging.WARNING,
        format=f"%(asctime)s rank{dist_info.rank} %(levelname)s %(message)s",
    )
    world = dist_info.world_size
    planned = cfg.optimization.step_micro_batches(world)
    cfg = cfg.for_world(world)  # an elastic gang of any size trains the same global batch
    micro = cfg.optimization.accumulation_steps
    log.info(
        "world of %d ranks x %d micro-batches of %d: a global batch of %d sequences",
        world,
        micro,
        cfg.data.batch_size,
        cfg.global_batch(world),
    )
    if micro * world != planned:
        log.warning(
            "%d ranks cannot split the global batch of %d micro-batches evenly: each runs %d,"
            " so steps train %d micro-batches until the gang is whole again",
            world,
            planned,
            micro,
            micro * world,
        )
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, runtime, dist_info)
        summary = trainer.train()
    except (ConfigError, StoreConflict) as err:  # e.g. unusable data, another job's store
        _failed(trainer, f"ConfigInvalid: {err}")
        print(err, file=sys.stderr)
        TerminationMessage("ConfigInvalid", str(err)).write(runtime.termination_log)
        return ExitCode.CONFIG_INVALID
    except NaNUnrecoverable as err:
        _failed(trainer, f"NaNUnrecoverable: {err}")
        if dist_info.is_main and trainer is not None:
            TerminationMessage(
                "NaNUnrecoverable",
                str(err),
                step=err.step,
                resumed_from=resumed.uri if (resumed := trainer.checkpoints.resumed_from) else None,
                restored_step=trainer.checkpoints.restored_step,
                skip_batches=",".join(f"{a}-{b}" for a, b in err.skip_ranges),
            ).write(runtime.termination_log)
        log.error("%s", err)
        return ExitCode.NAN_UNRECOVERABLE
    except Fenced as err:  # replaced by a newer attempt: stop, touching nothing
        log.error("%s", err)
        TerminationMessage("Fenced", str(err)).write(runtime.termination_log)
        return ExitCode.RETRYABLE
    except Preempted as err:
        step = trainer.step if trainer else None
        TerminationMessage("Preempted", str(err), step=step).write(runtime.termination_log)
        return ExitCode.PREEMPTED
    except Exception as err:
        traceback.print_exc()
        _failed(trainer, f"{type(err).__name__}: {err}")
        step = trainer.step if trainer else None
        TerminationMessage("Error", f"{type(err).__name__}: {err}", step=step).write(
            runtime.termination_log
        )
        return ExitCode.RETRYABLE
    finally:
        if trainer is not None:
            trainer.close()
        distributed.shutdown()
    if dist_info.is_main:
        if cfg.metrics.console:
            print_summary(summary.as_dict())
        TerminationMessage("Succeeded", "training finished", step=summary.steps).write(
            runtime.termination_log
        )
    return ExitCode.SUCCEEDED


def _failed(trainer: Trainer | None, reason: str) -> None:
    """Tell the sinks (webhook, W&B) how the attempt ended, before they close."""
    if trainer is not None:
        trainer.sinks.event("failed", trainer.step, reason=reason[:500])
