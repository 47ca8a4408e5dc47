"""Container processes: start one through init.py, signal it, reap it, probe it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

INIT_SCRIPT = Path(__file__).with_name("init.py")


class ContainerProcess:
    """One run of one container: its own process group, output appended to a log file."""

    def __init__(
        self,
        spec_path: Path,
        log_path: Path,
        start_error_file: Path,
        on_exit: Callable[[], None],
    ) -> None:
        self.log_path = log_path
        self.start_error_file = start_error_file
        start_error_file.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                # -I -S: no site-packages, no PYTHON* variables: a fast, predictable start.
                [sys.executable, "-I", "-S", str(INIT_SCRIPT), str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._proc.pid
        # Wakes the pod worker the moment the process ends, instead of polling.
        self._waiter = threading.Thread(
            target=self._wait, args=(on_exit,), daemon=True, name=f"wait-{self.pid}"
        )
        self._waiter.start()

    def _wait(self, on_exit: Callable[[], None]) -> None:
        self._proc.wait()
        on_exit()

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def start_failed(self) -> str | None:
        """The init's message if the command never started."""
        # The init creates the file up front; only a message in it means a failed start.
        if self.start_error_file.exists():
            return self.start_error_file.read_text() or None
        return None

    def signal_main(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        # The process group stands in for the container's cgroup.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def signal_tree(self, sig: int) -> None:
        """`sig` to the group and to every descendant, also those in sessions of their
        own (torchrun starts its workers with start_new_session): the cgroup freezer's
        reach, which the process group alone does not have."""
        self.signal_group(sig)
        for pid in descendants(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def reap(self) -> None:
        """After the main process ended: kill what is left of its group, as a cgroup would."""
        self.signal_group(signal.SIGKILL)


def descendants(root: int) -> list[int]:
    """Every live descendant of process `root`, parents before children (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def write_spec(
    path: Path,
    *,
    netns: Path,
    hostname: str,
    mounts: Sequence[Mapping[str, Any]],
    uid: int,
    gid: int,
    groups: Sequence[int],
    cwd: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    start_error_file: Path,
    no_new_privs: bool = False,
    read_only_root: bool = False,
    image_paths: Sequence[str] = (),
) -> None:
    """The launch spec init.py reads (root-only: it holds the container's secrets)."""
    data = {
        "netns": str(netns),
        "hostname": hostname,
        "mounts": list(mounts),
        "uid": uid,
        "gid": gid,
        "groups": list(groups),
        "cwd": cwd,
        "argv": list(argv),
        "env": dict(env),
        "start_error_file": str(start_error_file),
        "no_new_privs": no_new_privs,
        "read_only_root": read_only_root,
        "image_paths": list(image_paths),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"named port {value!r} not found in container {container.get('name')!r}")


def run_probe(
    probe: Mapping[str, Any],
    *,
    container: Mapping[str, Any],
    pod_ip: str,
    pid: int,
    uid: int,
    gid: int,
    env: Mapping[str, str],
) -> bool:
    """One probe attempt: exec (inside the pod's namespaces), httpGet or tcpSocket."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "exec" in probe:
            argv = [
                "nsenter",
                f"--target={pid}",
                "--net",
                "--mount",
                "--uts",
                f"--setuid={uid}",
                f"--setgid={gid}",
                "--",
                *probe["exec"]["command"],
            ]
            result = subprocess.run(
                argv, env=dict(env), capture_output=True, timeout=timeout, check=False
            )
            return result.returncode == 0
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or pod_ip
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{host}:{_port(get['port'], container)}{get.get('path', '/')}"
            req = urllib.request.Request(url)
            for header in get.get("httpHeaders") or []:
                req.add_header(header["name"], header["value"])
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status: int = resp.status
                return 200 <= status < 400
        if "tcpSocket" in probe:
            sock_port = _port(probe["tcpSocket"]["port"], container)
            with socket.create_connection((pod_ip, sock_port), timeout=timeout):
                return True
    except (OSError, ValueError, subprocess.TimeoutExpired, urllib.error.URLError):
        return False
    return False
