"""Mount points the process kubelets create on the host, and who may remove them.

A bind mount needs its target to exist, so a pod's /dev/termination-log or
/var/run/secrets/... appear (empty) on the host while pods run. They are removed
when the last kubelet on the machine exits, and not earlier: unlinking a mount
point detaches the mounts on it in every pod, including pods of another test
session running at the same time. Hence one registry per machine, in /run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

REGISTRY_DIR = Path("/run/kubetrain-kubelet")


class HostPaths:
    """Machine-wide registry: live kubelet processes and the paths they created."""

    def __init__(self, directory: Path = REGISTRY_DIR) -> None:
        self.directory = directory
        self._local_lock = threading.Lock()
        self._users = 0  # kubelets of this process

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._local_lock, (self.directory / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _marker(self) -> Path:
        return self.directory / f"{os.getpid()}.active"

    def acquire(self) -> None:
        with self._locked():
            self._users += 1
            self._marker().touch()

    def add(self, paths: list[Path]) -> None:
        if not paths:
            return
        with self._locked(), (self.directory / "paths").open("a") as out:
            out.writelines(f"{p}\n" for p in paths)

    def release(self) -> None:
        """One kubelet of this process is done; the last one on the machine cleans up."""
        with self._locked():
            self._users -= 1
            if self._users > 0:
                return
            self._marker().unlink(missing_ok=True)
            if self._others_alive():
                return
            listing = self.directory / "paths"
            paths = listing.read_text().splitlines() if listing.exists() else []
            remove_empty(Path(p) for p in paths if p)
            listing.unlink(missing_ok=True)

    def _others_alive(self) -> bool:
        for marker in self.directory.glob("*.active"):
            pid = int(marker.stem)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                marker.unlink(missing_ok=True)  # a session that died without cleaning up
                continue
            except PermissionError:
                pass
            return True
        return False


def remove_empty(paths: Iterator[Path] | list[Path]) -> None:
    """Remove empty files and empty directories, deepest first; leave anything else."""
    for path in sorted(set(paths), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # fails unless empty: never removes what others put there
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
