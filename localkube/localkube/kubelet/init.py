"""First process of a pod container: enter the pod's namespaces, mount, drop root, exec.

Run by the process kubelet as `python -I -S init.py SPEC.json` (standard
library only, so that it runs without the project on sys.path). SPEC gives the
pod's network namespace, hostname, bind mounts, user, working directory, argv
and environment. On success this process becomes the container's command
(same pid), so signals and the exit status are the container's own.

Every mount source is opened before anything is mounted, and mounted from
that descriptor: a volume at /tmp must not hide the sources of the mounts after
it (the pod's files live in the harness's state dir under /tmp).

The "image" of a non-root container is the project's venv, Python and shims on
the host, whose parents (/root, the state dir) only root may enter. Inside the
pod's own mount namespace such a parent is covered by an empty tmpfs in which
just those directories are bind-mounted (read-only), so uid 65532 reaches the
interpreter without any host directory's mode being widened.
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


def _mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str = ""
) -> None:
    src = source.encode() if source is not None else None
    kind = fstype.encode() if fstype is not None else None
    opts = data.encode() if data else None
    result = _libc.mount(src, target.encode(), kind, flags, opts)
    _check(result, f"mount {source} -> {target}")


def _open_source(path: str) -> tuple[int, str]:
    """An O_PATH descriptor of a mount source and the /proc path that names it."""
    fd = os.open(path, os.O_PATH)
    return fd, f"/proc/self/fd/{fd}"


def _walled_parent(path: str) -> str | None:
    """The outermost ancestor of `path` that other users cannot enter, if any."""
    current = Path("/")
    for part in Path(path).parts[1:-1]:
        current = current / part
        if not current.stat().st_mode & 0o001:
            return str(current)
    return None


def expose_image(paths: list[str]) -> None:
    """Make `paths` reachable for any uid inside this mount namespace (see above)."""
    sources = {p: _open_source(p) for p in paths if Path(p).is_dir()}
    # All walls first: once one is covered, the paths beneath it are gone.
    walls = {_walled_parent(path) for path in sources}
    masked = {wall for wall in walls if wall is not None}
    for wall in sorted(masked):
        _mount("tmpfs", wall, 0, "tmpfs", "mode=755")
    for path, (fd, proc_path) in sources.items():
        if any(path.startswith(wall + "/") for wall in masked):
            _ensure_target(path, False)
            _mount(proc_path, path, MS_BIND | MS_REC)
            _mount(None, path, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)


def _restore_image(image: dict[str, tuple[int, str]], targets: list[str]) -> None:
    """Bind image directories back over volumes mounted above them: a real image's
    files are never under a pod's volume, but the harness's "image" (the clone, the
    venv) may live under /tmp, where the trainer mounts an emptyDir."""
    for path, (fd, proc_path) in image.items():
        if any(path.startswith(target.rstrip("/") + "/") for target in targets):
            _ensure_target(path, False)
            _mount(proc_path, path, MS_BIND | MS_REC)
        os.close(fd)


def _ensure_target(target: str, is_file: bool) -> None:
    path = Path(target)
    if is_file:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.touch()
    else:
        path.mkdir(parents=True, exist_ok=True)


def make_root_read_only() -> None:
    """readOnlyRootFilesystem: the root mount becomes read-only in this namespace only.

    Done last: the volumes and image binds above are mounts of their own and stay as
    they are; a bind made after this from a path on the root would inherit read-only.
    """
    # ST_NOSUID, ST_NODEV, ST_NOEXEC have the values of MS_NOSUID, MS_NODEV, MS_NOEXEC.
    kept = os.statvfs("/").f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC)
    _mount(None, "/", MS_BIND | MS_REMOUNT | MS_RDONLY | kept)


def enter_pod(spec: dict[str, Any]) -> None:
    netns_fd = os.open(spec["netns"], os.O_RDONLY)
    _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns(net)")
    os.close(netns_fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
    # Our mounts must not propagate back to the host's mount namespace.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    sources = [_open_source(mount["source"]) for mount in spec["mounts"]]
    image_paths = [p for p in spec.get("image_paths", []) if Path(p).is_dir()]
    image = {path: _open_source(path) for path in image_paths}
    if spec["uid"] != 0:
        expose_image(image_paths)
    for mount, (fd, proc_path) in zip(spec["mounts"], sources, strict=True):
        _ensure_target(mount["target"], mount["is_file"])
        _mount(proc_path, mount["target"], MS_BIND | MS_REC)
        if mount["read_only"]:
            _mount(None, mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    _restore_image(image, [mount["target"] for mount in spec["mounts"]])
    if spec.get("read_only_root"):
        make_root_read_only()
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
    # Opened as root, before the pod's mounts hide the state dir and the uid changes;
    # close-on-exec, so the container never sees it.
    error_fd = os.open(spec["start_error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        enter_pod(spec)
        os.chdir(spec["cwd"])
        drop_privileges(spec)
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as err:
        message = f"process kubelet: cannot start container: {err}"
        print(message, file=sys.stderr, flush=True)
        # Tells the kubelet that the command never ran (StartError), whatever the status.
        os.write(error_fd, message.encode())
        return START_ERROR_EXIT
    return START_ERROR_EXIT  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
