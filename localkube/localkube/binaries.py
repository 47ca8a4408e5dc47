"""Where the test control-plane binaries are.

Lookup order for each name, first hit wins:

1. ``$KUBEBUILDER_ASSETS/<name>``: envtest's convention; a directory the user
   filled with binaries they chose, so their versions are not checked.
2. The cache that ``tools/testbin.sh`` fills:
   ``${KUBETRAIN_CACHE:-~/.cache/kubetrain}/testbin/<name>-<version>/<name>``,
   keyed by the versions in ``tools/versions.env`` (the one place they live).
3. ``PATH``, if the binary there reports the pinned version (any version for
   MinIO and for Debian's Prometheus and promtool, which are not pinned; never
   for kueue, which cannot say its version).

``tools/testbin.sh`` runs this file as a script to share the same rules::

    python3 localkube/localkube/binaries.py locate kube-apiserver   # its path
    python3 localkube/localkube/binaries.py plan etcd kubectl       # NAME cached|found|missing PATH
    python3 localkube/localkube/binaries.py env                     # KUBETRAIN_TESTBIN_<NAME>=PATH
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NAMES", "MissingBinary", "binary", "kubernetes_version", "pinned_version"]

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "tools" / "versions.env"

_PROBE_TIMEOUT_SECONDS = 30


class MissingBinary(RuntimeError):
    """A binary the harness needs is in none of the places we look."""


@dataclass(frozen=True)
class _Spec:
    # Key in tools/versions.env; None for binaries we take from Debian.
    version_key: str | None
    # Arguments that make the binary print its version, and a regex whose
    # first group is that version. Empty: any binary of that name will do.
    probe: tuple[str, ...] = ()
    pattern: str = ""
    # False: a binary of that name on PATH is never used (its version cannot be told).
    on_path: bool = True


_KUBE = _Spec("KUBERNETES_VERSION", ("--version",), r"Kubernetes (v\S+)")

_SPECS: dict[str, _Spec] = {
    "etcd": _Spec("ETCD_VERSION", ("--version",), r"etcd Version: (\S+)"),
    "kube-apiserver": _KUBE,
    "kube-controller-manager": _KUBE,
    "kube-scheduler": _KUBE,
    # Not --version: a foreign kubectl (this machine's /usr/bin/kubectl is
    # v1.32) must be told apart by the client version alone.
    "kubectl": _Spec(
        "KUBERNETES_VERSION",
        ("version", "--client", "--output=json"),
        r'"gitVersion":\s*"(v[^"]+)"',
    ),
    "helm": _Spec("HELM_VERSION", ("version", "--template={{.Version}}"), r"(v\d\S*)"),
    # MinIO's S3 API is stable across releases; any minio on PATH is fine.
    "minio": _Spec("MINIO_VERSION"),
    "kwok": _Spec("KWOK_VERSION", ("--version",), r"version (v\S+)"),
    # kueue has no --version, and its CRDs come from the cache dir beside it (kueue.py).
    "kueue": _Spec("KUEUE_VERSION", on_path=False),
    # A kube-scheduler with extra plugins, stamped with its own release
    # (Kubernetes v0.31.8); its PodGroup CRD is beside it (coscheduling.py).
    "scheduler-plugins": _Spec("SCHEDULER_PLUGINS_VERSION", ("--version",), r"Kubernetes (v\S+)"),
    "prometheus": _Spec(None),
    "promtool": _Spec(None),
}

NAMES: tuple[str, ...] = tuple(_SPECS)


@functools.cache
def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in VERSIONS_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{VERSIONS_FILE}: not KEY=VALUE: {raw!r}")
        versions[key.strip()] = value.strip()
    return versions


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown test binary {name!r}; known: {', '.join(NAMES)}") from None


def pinned_version(name: str) -> str | None:
    """The version of `name` in tools/versions.env, or None if it is not pinned."""
    key = _spec(name).version_key
    return None if key is None else _versions()[key]


def _cache_root() -> Path:
    base = os.environ.get("KUBETRAIN_CACHE") or str(Path.home() / ".cache" / "kubetrain")
    # Absolute: the harness starts processes from other working directories.
    return Path(base).absolute() / "testbin"


def install_dir(name: str) -> Path | None:
    """Where tools/testbin.sh puts `name`, or None if it does not build it."""
    version = pinned_version(name)
    return None if version is None else _cache_root() / f"{name}-{version}"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


@functools.cache
def _probe(path: Path, args: tuple[str, ...], pattern: str) -> str | None:
    # Cached per path: probing runs the binary, and tests ask often.
    try:
        done = subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None


def _same_version(a: str, b: str) -> bool:
    # etcd prints "3.6.16" where versions.env says "v3.6.16".
    return a.removeprefix("v") == b.removeprefix("v")


def _acceptable_on_path(name: str, path: Path) -> bool:
    spec = _spec(name)
    wanted = pinned_version(name)
    if not spec.on_path:
        return False
    if not spec.probe or wanted is None:
        return True
    found = _probe(path, spec.probe, spec.pattern)
    return found is not None and _same_version(found, wanted)


def binary(name: str) -> Path:
    """The path of test binary `name` (see the module docstring for the order).

    Raises MissingBinary when none is found, ValueError for an unknown name.
    """
    _spec(name)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        candidate = Path(assets).absolute() / name
        if _is_executable(candidate):
            return candidate
    directory = install_dir(name)
    if directory is not None and _is_executable(directory / name):
        return directory / name
    on_path = shutil.which(name)
    if on_path is not None and _acceptable_on_path(name, Path(on_path)):
        return Path(on_path).absolute()
    wanted = pinned_version(name)
    hint = "apt-get install prometheus" if wanted is None else "make testbin"
    places = ["$KUBEBUILDER_ASSETS", *([str(directory)] if directory else []), "PATH"]
    what = f"{name} {wanted}" if wanted else name
    rejected = ""
    if on_path:
        why = "another version" if _spec(name).on_path else "not used (no version to check)"
        rejected = f"; {on_path} is {why}"
    raise MissingBinary(
        f"{name} not found: run `{hint}` (looked for {what} in {', '.join(places)}{rejected})"
    )


def kubernetes_version() -> str:
    """The version of the kube-apiserver that binary() picks, e.g. "v1.37.1".

    The process kubelet reports it as its own, so nodes match the control plane
    even when KUBEBUILDER_ASSETS brings other binaries.
    """
    path = binary("kube-apiserver")
    if path.parent == install_dir("kube-apiserver"):
        return _versions()["KUBERNETES_VERSION"]
    found = _probe(path, _KUBE.probe, _KUBE.pattern)
    if found is None:
        raise MissingBinary(f"{path} --version printed no Kubernetes version")
    return found


def _env_lines() -> list[str]:
    lines = []
    for name in NAMES:
        try:
            path = binary(name)
        except MissingBinary:
            continue
        key = "KUBETRAIN_TESTBIN_" + name.upper().replace("-", "_")
        lines.append(f"{key}={path}")
        if name == "kube-apiserver":
            lines.append(f"KUBETRAIN_KUBERNETES_VERSION={kubernetes_version()}")
    return lines


def _plan_line(name: str) -> str:
    # "NAME cached|found|missing PATH": where it is, or where testbin.sh
    # should build it ("-" when it does not build it).
    directory = install_dir(name)
    try:
        path = binary(name)
    except MissingBinary:
        return f"{name} missing {directory or '-'}"
    state = "cached" if directory is not None and path.parent == directory else "found"
    return f"{name} {state} {path}"


def _main(argv: list[str]) -> int:
    command, names = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "locate" and len(names) == 1:
            print(binary(names[0]))
        elif command == "plan" and names:
            print("\n".join(_plan_line(name) for name in names))
        elif command == "env" and not names:
            print("\n".join(_env_lines()))
        else:
            print("usage: binaries.py locate NAME | plan NAME... | env", file=sys.stderr)
            return 2
    except (MissingBinary, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
