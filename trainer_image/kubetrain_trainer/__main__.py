"""`python -m kubetrain_trainer train --config FILE [dotted.key=value ...]`: what torchrun
runs in every worker (the pods' command, `kubetrain run`)."""

import argparse
import sys
from pathlib import Path

from kubetrain_trainer.entrypoint import train_main

parser = argparse.ArgumentParser(prog="python -m kubetrain_trainer")
sub = parser.add_subparsers(dest="command", required=True)
train = sub.add_parser("train", help="run the trainer (torchrun-aware)")
train.add_argument("--config", required=True, type=Path, help="trainer config YAML")
train.add_argument("overrides", nargs="*", metavar="dotted.key=value")
args = parser.parse_args()
sys.exit(train_main(args.config, args.overrides))
