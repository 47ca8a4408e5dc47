"""Fault injection: which faults apply, NaN steps, and real crashes, exits and hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kubetrain_core.contract import Fault, parse_faults
from kubetrain_devcluster.project import source_path
from kubetrain_trainer.faults import FaultInjector

TRAINER_ROOT = source_path()


class HungError(Exception):
    pass


def _raise_hung() -> None:
    raise HungError


def test_from_env_parses_and_empty_means_none() -> None:
    injector = FaultInjector.from_env(environ={"KUBETRAIN_FAULT_INJECT": "nan@step=3,times=2"})
    assert injector.faults == [Fault(kind="nan", step=3, times=2)]
    assert not FaultInjector.from_env(environ={})
    with pytest.raises(ValueError, match="cannot parse"):
        FaultInjector.from_env(environ={"KUBETRAIN_FAULT_INJECT": "boom@step=1"})


def test_nan_steps_with_and_without_times() -> None:
    twice = FaultInjector(parse_faults("nan@step=3,times=2"))
    assert [s for s in range(10) if twice.loss_fault(s)] == [3, 4]
    forever = FaultInjector(parse_faults("nan@step=5"))
    assert [s for s in range(10) if forever.loss_fault(s)] == [5, 6, 7, 8, 9]
    assert not FaultInjector([]).loss_fault(5)


def test_rank_filter() -> None:
    faults = parse_faults("nan@step=1,rank=1;nan@step=7")
    assert [s for s in range(9) if FaultInjector(faults, rank=0).loss_fault(s)] == [7, 8]
    assert [s for s in range(3) if FaultInjector(faults, rank=1).loss_fault(s)] == [1, 2]


def test_times_limits_crash_exit_hang_to_first_attempts() -> None:
    faults = parse_faults("crash@step=5,times=1;exit@step=6,times=2,code=3;hang@step=7;nan@step=1")
    kinds = {n: [f.kind for f in FaultInjector(faults, restart_count=n).faults] for n in range(3)}
    assert kinds[0] == ["crash", "exit", "hang", "nan"]
    assert kinds[1] == ["exit", "hang", "nan"]
    assert kinds[2] == ["hang", "nan"]  # no times: every attempt
    env = {"KUBETRAIN_FAULT_INJECT": "crash@step=5,times=1", "KUBETRAIN_RESTART_COUNT": "1"}
    assert not FaultInjector.from_env(environ=env)


def test_maybe_fail_acts_only_at_its_step() -> None:
    injector = FaultInjector(parse_faults("hang@step=4;exit@step=6,code=9"), hang=_raise_hung)
    for step in (1, 2, 3, 5):
        injector.maybe_fail(step)
    with pytest.raises(HungError):
        injector.maybe_fail(4)
    with pytest.raises(SystemExit) as exited:
        injector.maybe_fail(6)
    assert exited.value.code == 9
    injector.maybe_fail(7)  # past the faults: nothing more happens


def _child(fault: str, steps: int = 5, rank: int = 0) -> subprocess.Popen[str]:
    """A process that runs steps 0..steps-1 through the injector, printing each step."""
    code = textwrap.dedent(f"""
        import sys
        from kubetrain_trainer.faults import FaultInjector
        injector = FaultInjector.from_env(rank={rank})
        try:
            for step in range({steps}):
                print("step", step, flush=True)
                injector.maybe_fail(step)
            print("finished", flush=True)
        finally:
            print("cleanup", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": TRAINER_ROOT, "KUBETRAIN_FAULT_INJECT": fault}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_crash_exits_1_without_cleanup() -> None:
    proc = _child("crash@step=2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out.split() == ["step", "0", "step", "1", "step", "2"]  # no finished, no cleanup
    assert "fault injection: crash at step 2" in err


def test_exit_uses_its_code_and_runs_cleanup() -> None:
    proc = _child("exit@step=1,code=65")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 65
    assert out.splitlines() == ["step 0", "step 1", "cleanup"]
    assert "exit code 65 at step 1" in err


def test_fault_for_another_rank_does_nothing() -> None:
    proc = _child("crash@step=1,rank=1", rank=0)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "finished" in out


def test_hang_never_returns() -> None:
    proc = _child("hang@step=1")
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()  # blocks until the injector announces the hang
        assert "fault injection: hang at step 1" in line
        # Still inside maybe_fail: it neither finished the loop nor exited.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert "finished" not in out
    assert "step 2" not in out
