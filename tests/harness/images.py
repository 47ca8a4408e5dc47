"""The project's images, as far as the process kubelet needs them: their ENTRYPOINTs.

Pods run their commands on the host, so an image contributes nothing but the
entrypoint a container without `command` runs (the chart's operator Deployment
passes only args, as it should against the real image). Entrypoints are read
from the Dockerfile: the stage `<target>` is the image `.../kubetrain-<target>`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_STAGE = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", re.IGNORECASE)
_ENTRYPOINT = re.compile(r"^ENTRYPOINT\s+(\[.*\])\s*$", re.IGNORECASE)


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


def project_entrypoints(dockerfile: Path) -> dict[str, list[str]]:
    """`kubetrain-<target>` -> the ENTRYPOINT of the Dockerfile's stage `<target>`."""
    stages = dockerfile_entrypoints(dockerfile.read_text()) if dockerfile.exists() else {}
    return {f"kubetrain-{stage}": argv for stage, argv in stages.items()}
