"""What a TrainingJob may put into its pods: the allow-list, the fixed rules, the pod
the builders make of it, and the generated admission policy (pure: no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetrain_core import admission, pod_policy
from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.pod_policy import Allowed
from kubetrain_operator import builders
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _job_data(**spec: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {"namespace": "team-a", "uid": "u1"}
    data["spec"] |= spec
    return data


def _pod_spec(**fields: Any) -> dict[str, Any]:
    return {"template": {"spec": fields}}


REFUSED = [
    (_pod_spec(hostNetwork=True), "spec.template.spec.hostNetwork: not allowed"),
    (_pod_spec(hostPID=True), "spec.template.spec.hostPID: not allowed"),
    (
        _pod_spec(initContainers=[{"name": "x", "securityContext": {"privileged": True}}]),
        "initContainers",
    ),
    (_pod_spec(serviceAccountName="admin"), "spec.template.spec.serviceAccountName"),
    (_pod_spec(nodeName="node-1"), "spec.template.spec.nodeName"),
    (_pod_spec(volumes=[{"name": "h", "hostPath": {"path": "/"}}]), "volumes[0].hostPath"),
    (_pod_spec(volumes=[{"name": "s", "secret": {"secretName": "x"}}]), "volumes[0].secret"),
    (
        _pod_spec(volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}}]),
        "volumes[0].projected",
    ),
    (_pod_spec(securityContext={"privileged": True}), "securityContext.privileged"),
    (_pod_spec(securityContext={"runAsUser": 0}), "securityContext.runAsUser: must not be 0"),
    (_pod_spec(volumeMounts=[{"name": "v", "mountPath": "/etc"}]), "volumeMounts[0].mountPath"),
    (_pod_spec(volumeMounts=[{"name": "v", "mountPath": "/tmp/x"}]), "volumeMounts[0].mountPath"),
    (_pod_spec(volumeMounts=[{"name": "v", "mountPath": "/dev/shm"}]), "volumeMounts[0].mountPath"),
    (_pod_spec(volumes=[{"name": "kubetrain-config", "emptyDir": {}}]), "volumes[0].name"),
    ({"env": [{"name": "KUBETRAIN_CHECKPOINT_URI", "value": "s3://b/x"}]}, "spec.env[0].name"),
    ({"env": [{"name": "MASTER_ADDR", "value": "evil"}]}, "spec.env[0].name"),
    ({"env": [{"name": "PET_RDZV_BACKEND", "value": "etcd"}]}, "spec.env[0].name"),
    ({"env": [{"name": "bad name", "value": "x"}]}, "not a valid environment variable name"),
    (
        {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}]},
        "secretKeyRef",
    ),
    (
        {"template": {"metadata": {"labels": {"kubetrain.io/job-name": "other"}}}},
        "labels.kubetrain.io/job-name",
    ),
    (
        {"template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}},
        "labels.app.kubernetes.io",
    ),
    (
        {"template": {"metadata": {"annotations": {"kubetrain.io/x": "1"}}}},
        "annotations.kubetrain.io/x",
    ),
]


@pytest.mark.parametrize(("spec", "named"), REFUSED, ids=[n for _, n in REFUSED])
def test_the_operator_refuses_naming_the_field(spec: dict[str, Any], named: str) -> None:
    problems = pod_policy.problems(spec, Allowed())
    assert any(named in p for p in problems), problems


ALLOWED = [
    _pod_spec(nodeSelector={"gpu": "a100"}, tolerations=[{"key": "gpu", "operator": "Exists"}]),
    _pod_spec(affinity={"nodeAffinity": {}}, priorityClassName="high", schedulerName="volcano"),
    _pod_spec(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}}]),
    _pod_spec(volumes=[{"name": "p", "projected": {"sources": [{"configMap": {"name": "c"}}]}}]),
    _pod_spec(volumeMounts=[{"name": "data", "mountPath": "/data", "readOnly": True}]),
    _pod_spec(
        securityContext={"fsGroup": 1000, "runAsUser": 1000}, imagePullSecrets=[{"name": "r"}]
    ),
    {
        "env": [
            {"name": "KUBETRAIN_FAULT_INJECT", "value": "crash@step=3"},
            {"name": "HF_HOME", "value": "/data"},
        ]
    },
    {"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
    {"template": {"metadata": {"labels": {"team": "nlp", "example.com/cost-center": "42"}}}},
]


@pytest.mark.parametrize("spec", ALLOWED)
def test_what_a_training_job_needs_is_allowed(spec: dict[str, Any]) -> None:
    assert pod_policy.problems(spec, Allowed()) == []


def test_an_admin_widens_the_lists() -> None:
    spec = _pod_spec(
        serviceAccountName="s3-reader", volumes=[{"name": "h", "hostPath": {"path": "/d"}}]
    )
    spec["env"] = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}]
    wide = Allowed.widened(["serviceAccountName", "containers"], ["hostPath"], secret_env=True)
    assert pod_policy.problems(spec, wide) == []
    assert "containers" not in wide.pod_fields  # the operator's own fields stay its own
    # What no setting allows stays refused.
    reserved = {"env": [{"name": "RANK", "value": "0"}]}
    assert pod_policy.problems(reserved, wide)


def test_the_models_refuse_the_fixed_rules_for_kubetrain_validate() -> None:
    with pytest.raises(ValidationError, match=r"spec.env\[0\].name: WORLD_SIZE"):
        TrainingJob.model_validate(_job_data(env=[{"name": "WORLD_SIZE", "value": "9"}]))
    with pytest.raises(ValidationError, match="rendezvous port"):
        TrainingJob.model_validate(_job_data(monitoring={"port": 29400}))
    with pytest.raises(ValidationError, match="image"):
        TrainingJob.model_validate(_job_data(image="my image:1"))
    with pytest.raises(ValidationError, match="image"):
        TrainingJob.model_validate(_job_data(image=""))
    with pytest.raises(ValidationError, match="qualified name"):
        TrainingJob.model_validate(_job_data(template={"metadata": {"labels": {"a b": "x"}}}))


def test_the_pod_keeps_the_operators_labels_and_stays_restricted() -> None:
    data = _job_data(
        template={
            "metadata": {"labels": {"team": "nlp"}},
            "spec": {"securityContext": {"fsGroup": 2000, "runAsUser": 1000}},
        }
    )
    job = TrainingJob.model_validate(data)
    pod = builders.build_pod(job, 0, RecoveryStatus(attempt=2), Settings())
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "nlp" and labels[builders.JOB_LABEL] == "tiny-stories"
    assert labels[builders.ATTEMPT_LABEL] == "2"
    context = pod["spec"]["securityContext"]
    assert context["fsGroup"] == 65532  # the restricted defaults hold...
    assert context["runAsUser"] == 1000  # ... a job's own non-root id wins
    assert context["runAsNonRoot"] is True and context["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert pod["spec"]["automountServiceAccountToken"] is False  # the trainer needs no token


def test_the_chart_ships_the_generated_policy_and_its_lists() -> None:
    spec_file = yaml.safe_load((ROOT / admission.CHART_SPEC_PATH).read_text())
    assert spec_file == admission.policy_spec()
    params = yaml.safe_load((ROOT / admission.CHART_PARAMS_PATH).read_text())
    assert params == admission.params_data()
    assert params["podFields"].split(",") == list(pod_policy.POD_FIELDS)
