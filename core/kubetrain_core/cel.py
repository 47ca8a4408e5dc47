"""CEL rules (`x-kubernetes-validations`) for the CRD, written next to the Python
validator each one mirrors: a model carries its rules in its JSON schema, so the API
server refuses at `kubectl apply` what `kubetrain validate` and the operator refuse.
tests/cases/validation.py holds the cases both are tested on.
"""

from __future__ import annotations

from typing import Any

Rule = dict[str, Any]
KEY = "x-kubernetes-validations"


def rule(expression: str, message: str, **extra: str) -> Rule:
    """One rule; `extra`: fieldPath, reason, messageExpression."""
    return {"rule": expression, "message": message, **extra}


def rules(*items: Rule) -> dict[str, Any]:
    """A model's or field's `json_schema_extra` carrying these rules."""
    return {KEY: list(items)}


def immutable(field: str) -> dict[str, Any]:
    return rules(rule("self == oldSelf", f"{field} is immutable; create a new TrainingJob instead"))


def cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def starts_with_any(var: str, prefixes: tuple[str, ...], names: tuple[str, ...] = ()) -> str:
    """`var` starts with one of `prefixes` or is one of `names`."""
    starts = " || ".join(f"{var}.startsWith('{p}')" for p in prefixes)
    return f"({starts} || {var} in {cel_list(names)})" if names else f"({starts})"
