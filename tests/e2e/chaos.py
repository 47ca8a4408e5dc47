"""Bookkeeping of the fault suite (`make chaos`): watch a job's checkpoint store while a
fault plays out, then verify every checkpoint, read what each attempt did from its
rank-0 log, and record one row per scenario.

Rows are printed at the end of the pytest run and written to runs/chaos.json. The
store is read the way the trainer reads it: the job's own signing key (from the Secret
the operator made), every manifest authenticated, every file's sha256 checked.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kubetrain_core.config import S3Config
from kubetrain_devcluster.jobs import ROOT, get_job, job_status, rank0_logs, store_uri
from kubetrain_trainer.checkpoint import CheckpointManager, CorruptCheckpoint, LocalStorage

if TYPE_CHECKING:
    from localkube.cluster import Cluster

REPORT = ROOT / "runs" / "chaos.json"
ROWS: list[Row] = []

_STEP_LINE = re.compile(r"^step (\d+)/\d+ \| loss", re.MULTILINE)
_RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


@dataclass
class Row:
    """What one scenario did to the job and its checkpoints."""

    scenario: str
    fault: str
    survived: bool = False  # Succeeded at exactly the expected step
    final_step: int | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    attempts: int = 0  # rank-0 processes that ran (zombies included)
    steps_lost: int = 0  # steps trained more than once
    checkpoints_committed: int = 0  # distinct committed checkpoints ever seen
    checkpoints_lost: int = 0  # seen committed, later gone or failing verification
    corrupt_resumes: int = 0  # resumes from a checkpoint that does not verify
    seconds: float = 0.0
    notes: str = ""


def signing_key(cluster: Cluster, namespace: str, job: str) -> bytes:
    """The job's manifest key, from the Secret the operator created for it."""
    body = cluster.api.get(f"/api/v1/namespaces/{namespace}/secrets/{job}-checkpoint-key")
    return base64.b64decode(body["data"]["checkpoint-key"])


def resumes(logs: list[str]) -> list[tuple[str, int]]:
    """(checkpoint URI, step) of every resume and in-process restore, in log order."""
    return [(m.group(1), int(m.group(2))) for log in logs for m in _RESUMED.finditer(log)]


def steps_trained(log: str) -> tuple[int, int]:
    """(first step this process resumed from or 0, the highest step it finished)."""
    steps = [int(s) for s in _STEP_LINE.findall(log)]
    resumed = [int(m.group(2)) for m in _RESUMED.finditer(log)][:1]
    return (resumed[0] if resumed else 0), max(steps, default=0)


class Scenario:
    """One fault scenario: `with Scenario(...) as sc:` apply the job, `sc.watch()` once it
    exists, inject the fault; the row is made on exit (a failure still leaves one)."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        name: str,
        *,
        scenario: str,
        fault: str,
        expected_steps: int,
        workdir: Path,
        local_store: Path | None = None,
        uri: str | None = None,
    ) -> None:
        """`local_store`: the host directory of a file:// store; `uri`: an S3 store other
        than the job's default."""
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.uri = uri
        self.row = Row(scenario, fault)
        self.expected_steps = expected_steps
        self.workdir = workdir
        self.local_store = local_store
        self.damaged: set[str] = set()  # checkpoint directories the test broke on purpose
        self.committed: set[str] = set()
        self._manager: CheckpointManager | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    # ---- the store ------------------------------------------------------------------

    @property
    def store(self) -> CheckpointManager:
        if self._manager is None:
            key = signing_key(self.cluster, self.namespace, self.name)
            if self.local_store is not None:
                self._manager = CheckpointManager(
                    "unused", storage=LocalStorage(self.local_store), key=key
                )
            else:
                assert self.cluster.minio is not None
                s3 = S3Config(endpoint=self.cluster.minio.endpoint)
                uri = self.uri or store_uri(self.cluster, self.namespace, self.name)
                self._manager = CheckpointManager(uri, s3, key=key)
        return self._manager

    def committed_now(self) -> set[str]:
        return {info.directory for info in self.store.scan() if info.committed}

    def watch(self) -> None:
        """Sample the committed checkpoints every second (the job and its Secret exist)."""
        self._thread = threading.Thread(target=self._sample, daemon=True, name=f"watch-{self.name}")
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.committed |= self.committed_now()
            except Exception:  # an outage the scenario caused, or the Secret not there yet
                continue

    def verify(self) -> dict[str, str | None]:
        """Every committed directory now -> None if it loads with verified hashes, else why."""
        results: dict[str, str | None] = {}
        for info in self.store.scan():
            if not info.committed:
                continue
            try:
                self.store.load(info, self.workdir / "verify")
                results[info.directory] = None
            except CorruptCheckpoint as error:
                results[info.directory] = str(error)
        return results

    # ---- the row --------------------------------------------------------------------

    def __enter__(self) -> Scenario:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        row = self.row
        row.seconds = round(time.monotonic() - self._started, 1)
        try:
            self._fill(row)
        except Exception as failure:  # the row is still written, saying what broke
            row.notes = f"{row.notes}; bookkeeping failed: {failure!r}".strip("; ")
        if error is not None:
            row.survived = False
            row.notes = f"{row.notes}; test failed: {error!r}"[:500].strip("; ")
        ROWS.append(row)
        write_report()

    def _fill(self, row: Row) -> None:
        status = job_status(self.cluster, self.namespace, self.name)
        row.final_step = (status.get("progress") or {}).get("step")
        row.restarts = status.get("restarts") or {}
        row.survived = status.get("state") == "Succeeded" and row.final_step == self.expected_steps
        get_job(self.cluster, self.namespace, self.name)  # still there: the Secret is too
        verified = self.verify()
        self.committed |= set(verified)
        intact = {d for d, problem in verified.items() if problem is None}
        row.checkpoints_committed = len(self.committed)
        row.checkpoints_lost = len(self.committed - intact - self.damaged)
        logs = rank0_logs(self.cluster, self.namespace, self.name)
        row.attempts = len(logs)
        trained = [steps_trained(log) for log in logs]
        row.steps_lost = max(0, sum(hi - lo for lo, hi in trained if hi > lo) - self.expected_steps)
        names = {uri.rsplit("/", 1)[-1] for uri, _ in resumes(logs)}
        row.corrupt_resumes = sum(1 for d in names if d in self.damaged or verified.get(d, "gone"))


def write_report() -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(row) for row in ROWS]
    REPORT.write_text(
        json.dumps(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "scenarios": rows},
            indent=1,
        )
    )


def table() -> list[str]:
    """The rows as text, one line per scenario."""
    head = f"{'scenario':<34} {'survived':<8} {'step':>5} {'restarts':>8} {'lost steps':>10} {'ckpts':>5} {'lost':>4} {'corrupt':>7} {'s':>6}"
    lines = [head]
    for r in ROWS:
        total = r.restarts.get("total", 0) if r.restarts else 0
        lines.append(
            f"{r.scenario:<34} {'yes' if r.survived else 'NO':<8} {r.final_step or 0:>5} {total:>8} "
            f"{r.steps_lost:>10} {r.checkpoints_committed:>5} {r.checkpoints_lost:>4} {r.corrupt_resumes:>7} {r.seconds:>6.0f}"
        )
    return lines
