"""This checkout as the local cluster's images: root, source roots, entry points."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from pathlib import Path

from localkube import Cluster, Images, NodeSpec
from localkube.images import dockerfile_entrypoints

REPO_ROOT = Path(__file__).resolve().parents[2]  # pods run here, as in the image WORKDIR


def source_roots() -> list[Path]:
    """The folders holding kubetrain's packages, as pyproject.toml lists them."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return [REPO_ROOT / Path(p).parent for p in packages]


def source_path() -> str:
    """PYTHONPATH for a process that imports kubetrain from this checkout."""
    return os.pathsep.join(str(p) for p in source_roots())


def images() -> Images:
    """kubetrain's images as pods on the local cluster see them: the Dockerfile's stage
    `<target>` is the image `.../kubetrain-<target>`, run from this checkout."""
    dockerfile = REPO_ROOT / "Dockerfile"
    stages = dockerfile_entrypoints(dockerfile.read_text()) if dockerfile.exists() else {}
    return Images(
        workdir=str(REPO_ROOT),
        entrypoints={f"kubetrain-{stage}": argv for stage, argv in stages.items()},
        env={"PYTHONPATH": source_path()},
        paths=(str(REPO_ROOT),),
    )


def cluster(nodes: Sequence[NodeSpec] | None = None, **options: object) -> Cluster:
    """A local cluster whose pods run kubetrain from this checkout."""
    return Cluster(nodes, images=images(), **options)  # type: ignore[arg-type]
