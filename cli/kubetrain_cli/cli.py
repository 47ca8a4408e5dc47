"""The `kubetrain` command: train (pod entry point), run (no cluster), validate, and more.

Each subcommand imports only what it needs, so `validate` works without torch
and the operator image never loads the trainer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run the trainer (the pod entry point; torchrun-aware)")
    train.add_argument("--config", required=True, type=Path, help="trainer config YAML")
    train.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    train.set_defaults(func=_train)

    run = sub.add_parser("run", help="run a TrainingJob YAML locally, without a cluster")
    run.add_argument("file", type=Path, help="TrainingJob YAML")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    run.add_argument(
        "--from-scratch",
        action="store_true",
        help="start a new timeline at step 0; the run's earlier checkpoints are kept",
    )
    run.add_argument(
        "overrides",
        nargs="*",
        metavar="dotted.key=value",
        help="trainer settings relative to spec.trainer, e.g. model.pretrained=/models/m",
    )
    run.set_defaults(func=_run)

    validate = sub.add_parser("validate", help="check a TrainingJob or trainer config offline")
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=_validate)

    checkpoints = sub.add_parser(
        "checkpoints", help="list (and --verify) what a job's checkpoint store holds"
    )
    checkpoints.add_argument("target", help="TrainingJob YAML, or a store URI (s3://, file://)")
    checkpoints.add_argument("--runs-dir", type=Path, default=Path("runs"), help="default: ./runs")
    checkpoints.add_argument("--key-file", type=Path, help="the job's manifest signing key")
    checkpoints.add_argument(
        "--verify", action="store_true", help="download each checkpoint and check every file"
    )
    checkpoints.set_defaults(func=_checkpoints)

    export = sub.add_parser(
        "export", help="a committed checkpoint as a model directory from_pretrained loads"
    )
    export.add_argument("checkpoint", help="a checkpoint's URI, or a store's (its newest)")
    export.add_argument("out", type=Path, help="the directory to write")
    export.add_argument("--key-file", type=Path, help="the job's manifest signing key")
    export.set_defaults(func=_export)

    crd = sub.add_parser(
        "crd", help="print the TrainingJob CRD (kubetrain crd | kubectl apply -f -)"
    )
    crd.set_defaults(func=_crd)

    operator = sub.add_parser("operator", help="run the TrainingJob operator (kopf)")
    operator.add_argument("--namespace", action="append", help="watch only these (default: all)")
    operator.add_argument("--health-port", type=int, default=8080, help="/healthz and /readyz")
    operator.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics")
    operator.add_argument(
        "--leader-elect",
        action="store_true",
        help="several replicas: only the holder of the Lease kubetrain-operator acts",
    )
    operator.add_argument("--verbose", action="store_true", help="debug logs")
    operator.set_defaults(func=_operator)

    args, extra = parser.parse_known_args(argv)
    # argparse ends a `*` positional at the first option: `run JOB --runs-dir D k=v` leaves
    # k=v over; overrides may come anywhere, so they are taken back here.
    if extra and isinstance(getattr(args, "overrides", None), list):
        if any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    code: int = args.func(args)
    return code


def _train(args: argparse.Namespace) -> int:
    from kubetrain_trainer.entrypoint import train_main

    return train_main(args.config, args.overrides)


def load_job(path: Path, overrides: list[str] | None = None) -> Any:
    """A validated TrainingJob, or a ConfigError listing every problem; `overrides`
    (dotted.key=value) set spec.trainer fields as `kubetrain train` does."""
    from pydantic import ValidationError

    from kubetrain_core.api import TrainingJob
    from kubetrain_core.config import ConfigError
    from kubetrain_core.config.loading import (
        apply_overrides,
        format_validation_error,
        read_yaml,
        resolve_paths,
    )

    data = read_yaml(path)
    if overrides:
        if not isinstance(data, dict) or not isinstance(data.get("spec", {}), dict):
            raise ConfigError(str(path), ["not a TrainingJob: no spec mapping"])
        apply_overrides(data.setdefault("spec", {}).setdefault("trainer", {}), overrides)
    try:
        job = TrainingJob.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None
    resolve_paths(job.spec.trainer, path.parent)
    return job


def _run(args: argparse.Namespace) -> int:
    from kubetrain_cli.local_run import run_local
    from kubetrain_core.config import ConfigError

    try:
        job = load_job(args.file, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    again = " ".join(["kubetrain run", str(args.file), *args.overrides])
    return run_local(job, args.runs_dir, from_scratch=args.from_scratch, again=f"`{again}`")


def _validate(args: argparse.Namespace) -> int:
    from kubetrain_core.config import ConfigError, load_config
    from kubetrain_core.config.loading import read_yaml

    try:
        data = read_yaml(args.file)
        if isinstance(data, dict) and data.get("kind") == "TrainingJob":
            job = load_job(args.file)
            print(f"{args.file}: valid TrainingJob {job.metadata.name!r}")
        else:
            load_config(args.file)
            print(f"{args.file}: valid trainer config")
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    from kubetrain_cli import checkpoints

    return checkpoints.main(args.target, args.runs_dir, args.key_file, args.verify)


def _export(args: argparse.Namespace) -> int:
    from kubetrain_core.config import ConfigError
    from kubetrain_core.contract import Env

    key = args.key_file.read_text().strip() if args.key_file else os.environ.get(Env.CHECKPOINT_KEY)
    try:
        from kubetrain_trainer.export import export_checkpoint

        info, out = export_checkpoint(args.checkpoint, args.out, key.encode() if key else None)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"exported {info.uri} (step {info.step}) to {out}")
    return 0


def _crd(args: argparse.Namespace) -> int:
    from kubetrain_core import crd

    sys.stdout.write(crd.render())
    return 0


def _operator(args: argparse.Namespace) -> int:
    from kubetrain_operator.main import run_operator

    return run_operator(
        namespaces=args.namespace or [],
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        leader_elect=args.leader_elect,
        verbose=args.verbose,
    )


if __name__ == "__main__":
    sys.exit(main())
