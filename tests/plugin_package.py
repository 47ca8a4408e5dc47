"""A user's plugin package, installed the way pip installs one (a package directory
and its .dist-info with entry points) into a directory the test puts on the path."""

from __future__ import annotations

from pathlib import Path

PACKAGE = "kt_user_plugins"

SOURCE = '''
"""What a user bakes into an image FROM the trainer image."""
import json
from pathlib import Path

import torch
from kubetrain_trainer.callbacks import Callback
from kubetrain_trainer.optimization.losses import LanguageModelingLoss


class StepLog(Callback):
    """Entry point callback.step_log: writes the steps it saw into the run dir."""

    def __init__(self, every: int = 1) -> None:
        self.every, self.steps = every, []

    def on_batch_end(self, state, **kwargs):
        if state.step % self.every == 0:
            self.steps.append(state.step)

    def on_train_end(self, state, **kwargs):
        if state.rank == 0:
            (Path(state.run_dir) / "plugin-steps.json").write_text(json.dumps(self.steps))


class DoubledLoss(LanguageModelingLoss):
    """Import path kt_user_plugins:DoubledLoss: twice the language-modelling loss."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(logits, targets)
'''


def install(site: Path) -> Path:
    """Write the package and its metadata under `site`; returns `site`."""
    (site / PACKAGE).mkdir(parents=True)
    (site / PACKAGE / "__init__.py").write_text(SOURCE)
    info = site / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[kubetrain.plugins]\ncallback.step_log = {PACKAGE}:StepLog\n"
    )
    return site
