"""Shape limits of a stored spec that the schema cannot express (pure).

A few allow-listed pod template fields (affinity, volumes, ...) keep Kubernetes'
own free-form shape in the CRD, so the API server admits them nested as deep as its
JSON decoder goes. Recursive code (pydantic, kopf's own serialisation, deep copies)
must never meet such a spec: it is measured here without recursion, and a job over
either limit fails with InvalidSpec instead of wedging the operator.
"""

from __future__ import annotations

import json
from typing import Any

# Real pod specs nest about 10 deep (affinity terms); 32 leaves room and stays far
# below Python's recursion limit.
MAX_DEPTH = 32
# kopf keeps the last handled spec in an annotation, and all annotations of an object
# share 256 KiB.
MAX_SPEC_BYTES = 192 * 1024


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON-like value, counted iteratively; stops once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if not isinstance(node, dict | list):
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children)
    return deepest


def spec_problem(body: dict[str, Any]) -> str | None:
    """Why the stored job's spec cannot be processed, or None."""
    spec = body.get("spec")
    nested = depth(spec)
    if nested > MAX_DEPTH:
        return f"spec is nested more than {MAX_DEPTH} levels deep; no valid TrainingJob is"
    size = len(json.dumps(spec, separators=(",", ":")))
    if size > MAX_SPEC_BYTES:
        return (
            f"spec is {size} bytes of JSON, over the {MAX_SPEC_BYTES} a TrainingJob may have; "
            "move large values (data, options) into files the trainer reads"
        )
    return None
