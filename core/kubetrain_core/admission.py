"""The ValidatingAdmissionPolicy that refuses what pod_policy refuses, at `kubectl apply`.

The pod template's Kubernetes fields keep their free-form shape in the CRD, and the
allow-list is the cluster admin's to widen, so it is checked by a policy whose lists
come from a ConfigMap (its params): the chart renders that ConfigMap from its values
and gives the operator the same lists. Generated from pod_policy (the one home of the
lists); `make generate` writes operator/deploy/admission.yaml and the chart's copy of
the policy's spec, and tests/unit/test_generated.py fails when they are stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubetrain_core import pod_policy
from kubetrain_core.names import GROUP, PLURAL, VERSION

POLICY = "kubetrain-trainingjob-pods"
PARAMS = "kubetrain-admission"
PARAMS_NAMESPACE = "kubetrain-system"
DEPLOY_PATH = Path("operator") / "deploy" / "admission.yaml"
CHART_SPEC_PATH = Path("helm") / "kubetrain" / "files" / "admission-policy-spec.yaml"
CHART_PARAMS_PATH = Path("helm") / "kubetrain" / "files" / "admission-params.yaml"

_POD = "object.spec.template.spec"
_HAS_POD = "has(object.spec.template) && has(object.spec.template.spec)"


def _list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _check(field: str, rule: str, message: str) -> dict[str, Any]:
    """A rule on the pod template field `field`, vacuous when the job does not set it."""
    guard = f"!({_HAS_POD}) || !has({_POD}.{field})" if field else f"!({_HAS_POD})"
    return {
        "expression": f"{guard} || ({rule})",
        "messageExpression": message,
        "reason": "Forbidden",
    }


def params_data() -> dict[str, str]:
    """The default lists, as the params ConfigMap holds them."""
    return {
        "podFields": ",".join(pod_policy.POD_FIELDS),
        "volumeTypes": ",".join(pod_policy.VOLUME_TYPES),
        "allowSecretEnv": "false",
    }


def _mount_rule() -> str:
    paths = " && ".join(
        f"m.mountPath != '{p}' && !m.mountPath.startsWith('{p}/')"
        f" && !'{p}'.startsWith(m.mountPath + '/')"
        for p in pod_policy.RESERVED_MOUNT_PATHS
    )
    names = _list(pod_policy.RESERVED_VOLUMES)
    return (
        f"{_POD}.volumeMounts.all(m, !has(m.mountPath) || ({paths}))"
        f" && {_POD}.volumeMounts.all(m, !has(m.name) || !(m.name in {names}))"
    )


def _security_context_rule() -> str:
    context = f"{_POD}.securityContext"
    ids = " && ".join(
        f"(!has({context}.{key}) || {context}.{key} != 0)" for key in ("runAsUser", "runAsGroup")
    )
    return f"{context}.all(k, k in {_list(pod_policy.SECURITY_CONTEXT_FIELDS)}) && {ids}"


def policy_spec() -> dict[str, Any]:
    fields, volumes = "variables.podFields", "variables.volumeTypes"
    reserved = ", ".join(pod_policy.RESERVED_VOLUMES)
    names = _list(pod_policy.RESERVED_VOLUMES)
    projected = _list(pod_policy.PROJECTED_SOURCES)
    secret_env = "has(e.valueFrom) && has(e.valueFrom.secretKeyRef)"
    return {
        "failurePolicy": "Fail",
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": [VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [PLURAL],
                }
            ]
        },
        "variables": [
            {"name": "podFields", "expression": "params.data.podFields.split(',')"},
            {"name": "volumeTypes", "expression": "params.data.volumeTypes.split(',')"},
        ],
        "validations": [
            _check(
                "",
                f"{_POD}.all(k, k in {fields})",
                f"'spec.template.spec.' + {_POD}.filter(k, !(k in {fields}))[0]"
                " + ': not allowed in a TrainingJob (allowed: ' + params.data.podFields"
                " + '); a cluster admin may allow more (docs/security.md)'",
            ),
            _check(
                "volumes",
                f"{_POD}.volumes.all(v, v.all(k, k == 'name' || k in {volumes}"
                f" || (k == 'projected' && (!has(v.projected.sources)"
                f" || v.projected.sources.all(s, s.all(t, t in {projected}))))))",
                "'spec.template.spec.volumes: volume types allowed are ' + params.data.volumeTypes"
                " + ', projected (configMap, downwardAPI); a cluster admin may allow more'",
            ),
            _check(
                "volumes",
                f"{_POD}.volumes.all(v, !has(v.name) || !(v.name in {names}))",
                f"'spec.template.spec.volumes: the names {reserved} are the operator\\'s'",
            ),
            _check(
                "volumeMounts",
                _mount_rule(),
                f"'spec.template.spec.volumeMounts: {', '.join(pod_policy.RESERVED_MOUNT_PATHS)}"
                f" and the volumes {reserved} are the operator\\'s (for a bigger /dev/shm set"
                " spec.shmSize)'",
            ),
            _check(
                "securityContext",
                _security_context_rule(),
                "'spec.template.spec.securityContext: only "
                f"{', '.join(pod_policy.SECURITY_CONTEXT_FIELDS)}"
                " (never 0 for the ids): the pod stays restricted'",
            ),
            {
                "expression": "!has(object.spec.env) || params.data.allowSecretEnv == 'true'"
                f" || !object.spec.env.exists(e, {secret_env})",
                "messageExpression": "'spec.env: valueFrom.secretKeyRef is not allowed (a job"
                " may not read Secrets into env; spec.checkpoint.s3.credentialsSecretName"
                " names the S3 credentials)'",
                "reason": "Forbidden",
            },
        ],
    }


def documents() -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": "kubetrain", "app.kubernetes.io/component": "admission"}
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY, "labels": labels},
            "spec": policy_spec(),
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY, "labels": labels},
            "spec": {
                "policyName": POLICY,
                "validationActions": ["Deny"],
                "paramRef": {
                    "name": PARAMS,
                    "namespace": PARAMS_NAMESPACE,
                    "parameterNotFoundAction": "Deny",
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": PARAMS, "namespace": PARAMS_NAMESPACE, "labels": labels},
            "data": params_data(),
        },
    ]


HEADER = (
    "# Generated by `make generate` from core/kubetrain_core/admission.py and pod_policy.py.\n"
    "# Do not edit: tests/unit/test_generated.py fails when it differs.\n"
)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100)


def render() -> str:
    return HEADER + "---\n".join(_dump(doc) for doc in documents())


def files() -> dict[Path, str]:
    """operator/deploy/admission.yaml and the chart's copies of the spec and the params."""
    return {
        DEPLOY_PATH: render(),
        CHART_SPEC_PATH: HEADER + _dump(policy_spec()),
        CHART_PARAMS_PATH: HEADER + _dump(params_data()),
    }
