"""The machine-wide registry of mount points created by process kubelets."""

from __future__ import annotations

import os
from pathlib import Path

from localkube.kubelet.hostpaths import HostPaths, remove_empty


def _made(tmp_path: Path) -> list[Path]:
    (tmp_path / "var" / "run" / "secrets").mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "termination-log").touch()
    return [
        tmp_path / "var",
        tmp_path / "var" / "run",
        tmp_path / "var" / "run" / "secrets",
        tmp_path / "dev" / "termination-log",
    ]


def test_last_kubelet_removes_created_paths(tmp_path: Path) -> None:
    registry = HostPaths(tmp_path / "registry")
    registry.acquire()
    registry.acquire()  # two kubelets in this process
    registry.add(_made(tmp_path))
    registry.release()
    assert (tmp_path / "dev" / "termination-log").exists()  # one kubelet still runs
    registry.release()
    assert not (tmp_path / "var").exists()
    assert not (tmp_path / "dev" / "termination-log").exists()
    assert (tmp_path / "dev").exists()  # not created by a kubelet: kept


def test_paths_stay_while_another_process_runs_pods(tmp_path: Path) -> None:
    registry = HostPaths(tmp_path / "registry")
    registry.acquire()
    registry.add(_made(tmp_path))
    (tmp_path / "registry" / "1.active").touch()  # pid 1 is alive: another session
    registry.release()
    assert (tmp_path / "dev" / "termination-log").exists()
    assert "termination-log" in (tmp_path / "registry" / "paths").read_text()


def test_markers_of_dead_sessions_are_ignored(tmp_path: Path) -> None:
    registry = HostPaths(tmp_path / "registry")
    registry.acquire()
    registry.add(_made(tmp_path))
    dead = tmp_path / "registry" / "4194304.active"  # above any pid_max: never a live pid
    dead.touch()
    registry.release()
    assert not dead.exists()
    assert not (tmp_path / "var").exists()
    assert not (tmp_path / "registry" / f"{os.getpid()}.active").exists()


def test_remove_empty_keeps_content(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "data").write_text("keep")
    written = tmp_path / "written-file"
    written.write_text("x")
    remove_empty([full, full / "data", written])
    assert (full / "data").read_text() == "keep"
    assert written.exists()
