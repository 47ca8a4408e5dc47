"""Kubernetes-shaped pieces of the API: the base model, names, and the structural
schemas of the free-form parts (resources, env) the API server validates."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from kubetrain_core import pod_policy

DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A qualified name (label and annotation keys): an optional DNS prefix and a name.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
K8sObject = dict[str, Any]
LabelKey = Annotated[str, Field(max_length=316, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]
AnnotationValue = Annotated[str, Field(max_length=4096)]

# Kubernetes-native parts keep their dict form in Python; in the CRD they get the
# shape the API server needs (structural, bounded) and core/v1 validates the rest
# when the pods are created.
FREE_FORM: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
QUANTITY_PATTERN = (  # resource.Quantity, as core/v1 publishes it
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"  # never negative
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,
}
_QUANTITIES: dict[str, Any] = {
    "type": "object",
    "maxProperties": 32,
    "additionalProperties": _QUANTITY,
    "x-kubernetes-validations": [
        {
            "rule": f"self.all(k, k.matches(r'{QUALIFIED_NAME}'))",
            "message": "resource names are qualified names, e.g. cpu, memory, nvidia.com/gpu",
        }
    ],
}
RESOURCES_SCHEMA: dict[str, Any] = {
    "properties": {
        "limits": {**_QUANTITIES, "description": "Maximum compute resources per worker."},
        "requests": {**_QUANTITIES, "description": "Compute resources reserved per worker."},
    },
    "additionalProperties": False,
}
ENV_VAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 256,
            "pattern": pod_policy.ENV_NAME.pattern,
            "description": "Variable name (not one the operator or torchrun sets).",
        },
        "value": {"type": "string", "maxLength": 8192, "description": "Literal value."},
        "valueFrom": {
            "type": "object",
            "description": "core/v1 EnvVarSource: secretKeyRef, configMapKeyRef, fieldRef, ...",
            **FREE_FORM,
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": f"!{pod_policy.reserved_env_cel('self.name')}",
            "messageExpression": "self.name + ' is set by the operator or torchrun and cannot"
            " be overridden'",
            "message": "names the operator or torchrun set (KUBETRAIN_*, PET_*, TORCHELASTIC_*,"
            " MASTER_ADDR, RANK, WORLD_SIZE, ...) cannot be overridden",
            "reason": "FieldValueForbidden",
        }
    ],
}


class ApiModel(BaseModel):
    """camelCase Kubernetes-style section; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)
