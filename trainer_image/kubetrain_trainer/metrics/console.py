"""What a person watching rank 0 sees: log lines, a progress bar, the end-of-run summary.

On a terminal a rich progress bar shows every step, with a log line every
``log_steps`` steps printed above it. Elsewhere (pods, CI, tests, files) only
the plain log lines are printed: a bar redrawn into a log is noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kubetrain_trainer.metrics.records import EvalRecord, Sink, StepRecord, perplexity


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)  # nan / inf, said plainly
    return format(value, fmt)


def format_step_line(
    step: int,
    total_steps: int,
    *,
    loss: float,
    loss_ema: float | None,
    lr: float,
    tokens_per_second: float | None,
) -> str:
    return (
        f"step {step}/{total_steps} | loss {_num(loss, '.4f')} | ema {_num(loss_ema, '.4f')}"
        f" | lr {_num(lr, '.3e')} | {_num(tokens_per_second, ',.0f')} tok/s"
    )


class ProgressReporter(Sink):
    """Prints training progress on rank 0 (construct it with ``enabled=False`` elsewhere)."""

    every_step = True  # the bar moves every step; a line is printed every log_steps

    def __init__(
        self,
        total_steps: int,
        log_steps: int = 1,
        console: Console | None = None,
        enabled: bool = True,
        start_step: int = 0,
    ) -> None:
        self.total_steps = total_steps
        self.log_steps = max(1, log_steps)
        self.enabled = enabled
        self.console = console or Console()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if enabled and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task(
                "train", total=total_steps, completed=start_step, stats=""
            )
            self._bar.start()

    def update(
        self,
        step: int,
        loss: float,
        loss_ema: float | None,
        lr: float,
        tokens_per_second: float | None,
    ) -> None:
        """Report step ``step`` (1-based: steps completed); prints every ``log_steps`` steps."""
        if not self.enabled:
            return
        if self._bar is not None and self._task is not None:
            stats = f"loss ema {_num(loss_ema, '.4f')} | {_num(tokens_per_second, ',.0f')} tok/s"
            self._bar.update(self._task, completed=step, stats=stats)
        if step % self.log_steps == 0 or step == self.total_steps:
            self.message(
                format_step_line(
                    step,
                    self.total_steps,
                    loss=loss,
                    loss_ema=loss_ema,
                    lr=lr,
                    tokens_per_second=tokens_per_second,
                )
            )

    def step(self, record: StepRecord) -> None:
        self.update(
            record.step,
            loss=record.loss,
            loss_ema=record.loss_ema,
            lr=record.lr,
            tokens_per_second=record.tokens_per_second,
        )

    def evaluation(self, record: EvalRecord) -> None:
        step = "" if record.split == "test" else f"step {record.step}/{self.total_steps} | "
        self.message(
            f"{step}{record.split}_loss {_num(record.loss, '.4f')}"
            f" | {record.split}_ppl {_num(record.perplexity, '.2f')}"
        )

    def message(self, text: str) -> None:
        """A line of its own (validation results, NaN events, checkpoints)."""
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The end-of-run summary as a two-column rich table.

    ``summary`` holds the run's facts (the trainer's ``RunSummary.as_dict()``):
    steps, total_steps, seconds, train_loss, val_loss, test_loss,
    tokens_per_second, checkpoints, nan_events, restores, run_dir and,
    optionally, parameters and trainable_parameters, resumed_from, last_checkpoint, export
    and outcome. Missing facts show as "-".
    """
    get = summary.get
    table = Table(title=f"kubetrain run {get('outcome', 'finished')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")

    def loss_row(name: str) -> None:
        loss = get(f"{name}_loss")
        ppl = None if loss is None else perplexity(loss)
        table.add_row(f"{name} loss / perplexity", f"{_num(loss, '.4f')} / {_num(ppl, '.2f')}")

    table.add_row("steps", f"{get('steps', '-')}/{get('total_steps', '-')}")
    seconds = get("seconds")
    table.add_row("time", "-" if seconds is None else _duration(seconds))
    loss_row("train")
    loss_row("val")
    loss_row("test")
    table.add_row("tokens/s", _num(get("tokens_per_second"), ",.0f"))
    total, trainable = get("parameters"), get("trainable_parameters")
    if total and trainable is not None:
        share = f"{trainable:,} trainable ({100 * trainable / total:.1f}%)"
        table.add_row("parameters", f"{total:,}, {share}")
    for stage in get("stages") or []:  # a staged strategy (progressive)
        val = f"{_num(stage['first_val_loss'], '.4f')} -> {_num(stage['last_val_loss'], '.4f')}"
        table.add_row(
            f"stage {stage['stage']} ({stage['active_stacks']} stacks)",
            f"steps {stage['first_step']}-{stage['last_step']} | val loss {val}"
            f" | {_num(stage['tokens_per_second'], ',.0f')} tok/s",
        )
    table.add_row("checkpoints written", str(get("checkpoints", "-")))
    table.add_row("NaN events / restores", f"{get('nan_events', '-')} / {get('restores', '-')}")
    if get("resumed_from") is not None:
        table.add_row("resumed from step", str(get("resumed_from")))
    if get("last_checkpoint"):
        table.add_row("last checkpoint", str(get("last_checkpoint")))
    if get("export"):
        table.add_row("model (from_pretrained)", str(get("export")))
    table.add_row("run dir", str(get("run_dir", "-")))
    return table


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(summary))
