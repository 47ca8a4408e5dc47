"""What an image means to the process kubelet: pods run their commands on the host, so
an image contributes only a working directory, the ENTRYPOINT a container without
`command` runs, environment, and the host paths a non-root container must reach.

`Images` is that, per cluster; `dockerfile_entrypoints` reads the ENTRYPOINTs of a
Dockerfile's stages, for a project whose images come from one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_STAGE = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", re.IGNORECASE)
_ENTRYPOINT = re.compile(r"^ENTRYPOINT\s+(\[.*\])\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Images:
    workdir: str | None = None
    """The working directory of containers without workingDir (the images' WORKDIR)."""
    entrypoints: Mapping[str, list[str]] = field(default_factory=dict)
    """Image repository (the last path component, untagged) -> its ENTRYPOINT."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment every container starts with (before the pod's own)."""
    paths: tuple[str, ...] = ()
    """Host paths containers must reach although their parents may be root-only."""


def image_repository(image: str) -> str:
    """`registry/name:tag@digest` -> `name`'s last path component, untagged."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def dockerfile_entrypoints(text: str) -> dict[str, list[str]]:
    """Stage name -> its last exec-form ENTRYPOINT."""
    found: dict[str, list[str]] = {}
    stage = ""
    for line in text.splitlines():
        if match := _STAGE.match(line.strip()):
            stage = match.group(1)
        elif (match := _ENTRYPOINT.match(line.strip())) and stage:
            found[stage] = [str(part) for part in json.loads(match.group(1))]
    return found
