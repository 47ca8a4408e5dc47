"""First process of a pod container: enter the pod's namespaces, mount, drop root, exec.

Run by the process kubelet as `python -I -S kubelet_init.py SPEC.json` (standard
library only, so that it runs without the project on sys.path). SPEC gives the
pod's network namespace, hostname, bind mounts, user, working directory, argv
and environment. On success this process becomes the container's command
(same pid), so signals and the exit status are the container's own.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_NO_NEW_PRIVS = 38

# Exit status when the pod cannot be set up or the command cannot be started
# (the kubelet reports it as reason StartError, as container runtimes do).
START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    _check(_libc.mount(src, target.encode(), None, flags, None), f"mount {source} -> {target}")


def _ensure_target(target: str, is_file: bool) -> None:
    path = Path(target)
    if is_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
    else:
        path.mkdir(parents=True, exist_ok=True)


def enter_pod(spec: dict[str, Any]) -> None:
    netns_fd = os.open(spec["netns"], os.O_RDONLY)
    _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns(net)")
    os.close(netns_fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
    # Our mounts must not propagate back to the host's mount namespace.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    for mount in spec["mounts"]:
        _ensure_target(mount["target"], mount["is_file"])
        _mount(mount["source"], mount["target"], MS_BIND | MS_REC)
        if mount["read_only"]:
            _mount(None, mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
    hostname = spec["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")


def drop_privileges(spec: dict[str, Any]) -> None:
    uid, gid = spec["uid"], spec["gid"]
    os.setgroups(spec.get("groups", []))
    os.setgid(gid)
    os.setuid(uid)
    if spec.get("no_new_privs"):
        # allowPrivilegeEscalation: false, as a container runtime applies it.
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    try:
        enter_pod(spec)
        os.chdir(spec["cwd"])
        drop_privileges(spec)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as err:
        message = f"process kubelet: cannot start container: {err}"
        print(message, file=sys.stderr, flush=True)
        # Tells the kubelet that the command never ran (StartError), whatever the status.
        Path(spec["start_error_file"]).write_text(message)
        return START_ERROR_EXIT
    return START_ERROR_EXIT  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
