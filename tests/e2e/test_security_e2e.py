"""No tenant can hurt another, on the local cluster: what `kubectl apply` refuses (the
CRD's schema and rules, the admission policy of operator/deploy/admission.yaml), pods
that never start, a spec built to break the operator, and what trainer pods get."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import pytest

from kubetrain_devcluster.jobs import (
    apply_job,
    get_job,
    job_pods,
    job_status,
    short_job,
    wait_state,
)
from kubetrain_devcluster.operator import OperatorProcess, create_s3_secret
from localkube.services import wait_until

if TYPE_CHECKING:
    from localkube.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _with(job: dict[str, Any], **spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(job)
    job["spec"] |= spec
    return job


def _template(**pod: Any) -> dict[str, Any]:
    return {"spec": pod}


REFUSED: list[tuple[str, dict[str, Any], str]] = [  # (case, spec, the field named)
    ("host-network", {"template": _template(hostNetwork=True)}, "spec.template.spec.hostNetwork"),
    (
        "privileged-init",
        {
            "template": _template(
                initContainers=[
                    {"name": "x", "image": "busybox", "securityContext": {"privileged": True}}
                ]
            )
        },
        "spec.template.spec.initContainers",
    ),
    (
        "host-path",
        {"template": _template(volumes=[{"name": "root", "hostPath": {"path": "/"}}])},
        "volume types allowed",
    ),
    (
        "reserved-env",
        {"env": [{"name": "KUBETRAIN_CHECKPOINT_URI", "value": "s3://x/y"}]},
        "KUBETRAIN_CHECKPOINT_URI",
    ),
    (
        "reserved-label",
        {"template": {"metadata": {"labels": {"kubetrain.io/job-name": "other"}}}},
        "labels",
    ),
    ("rdzv-port", {"monitoring": {"port": 29400}}, "spec.monitoring.port"),
    ("negative", {"resources": {"requests": {"cpu": "-1"}}}, "spec.resources.requests"),
]


@pytest.mark.parametrize("refused", REFUSED, ids=[c for c, _, _ in REFUSED])
def test_kubectl_apply_refuses_naming_the_field(
    cluster: Cluster,
    operator: OperatorProcess,
    namespace: str,
    refused: tuple[str, dict[str, Any], str],
) -> None:
    case, spec, named = refused
    job = _with(short_job(f"refused-{case}"), **spec)
    result = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input_text=json.dumps(job), check=False
    )
    assert result.returncode != 0, f"{case} was admitted"
    assert named in result.stderr, result.stderr
    listed = cluster.api.get(f"/apis/kubetrain.io/v1alpha1/namespaces/{namespace}/trainingjobs")
    assert listed["items"] == []


def test_a_name_too_long_for_its_pods_is_refused(cluster: Cluster, namespace: str) -> None:
    job = short_job("x" * 53)  # pods are <name>-<index>: 63 characters at most
    result = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input_text=json.dumps(job), check=False
    )
    assert result.returncode != 0 and "metadata.name" in result.stderr, result.stderr


def test_a_pod_the_api_server_refuses_fails_the_job_with_its_message(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "refused-pod"
    create_s3_secret(cluster, namespace)
    apply_job(
        cluster,
        namespace,
        _with(short_job(name), template=_template(priorityClassName="no-such-class")),
    )
    status = wait_state(cluster, operator, namespace, name, state="Failed", timeout=120)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "CreateRejected", failed
    assert "no-such-class" in failed["message"]  # the API server's own words
    assert status["restarts"]["total"] == 0


def test_pods_that_cannot_schedule_are_reported_with_the_schedulers_reason(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    name = "unschedulable"
    create_s3_secret(cluster, namespace)
    job = _with(
        short_job(name),
        template=_template(nodeSelector={"kubetrain.io/no-such-node": "x"}),
        faultTolerance={"startupDeadlineSeconds": 30},
    )
    apply_job(cluster, namespace, job)
    found: dict[str, Any] = {}

    def reported() -> bool:
        running = next(
            (
                c
                for c in job_status(cluster, namespace, name).get("conditions") or []
                if c["type"] == "Running"
            ),
            {},
        )
        found.update(running)
        return running.get("reason") == "PodsNotStarting"

    wait_until(reported, timeout=120, what="the Running condition to say why", interval=1.0)
    assert "Unschedulable" in found["message"] or "node" in found["message"], found
    assert job_status(cluster, namespace, name)["state"] != "Failed"  # onStartupTimeout: Wait
    events = cluster.kubectl("-n", namespace, "get", "events").stdout
    assert "PodsNotStarting" in events


def test_a_spec_built_to_break_the_operator_fails_alone(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """A pod template field nested 1500 levels deep is admitted (its Kubernetes type is
    free-form) and fails with InvalidSpec; a job beside it trains to the end. That job's
    pods also show what every trainer pod gets: no ServiceAccount token, and a
    NetworkPolicy of its own."""
    create_s3_secret(cluster, namespace)
    healthy = "beside"
    apply_job(cluster, namespace, short_job(healthy))

    deep = short_job("deep")
    deep["spec"]["template"] = {"spec": {"affinity": {"nodeAffinity": "@"}}}
    text = json.dumps(deep).replace('"@"', '{"a":' * 1500 + "1" + "}" * 1500)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input_text=text)

    def deep_status() -> dict[str, Any]:  # only the status: the spec is too deep to decode
        text = cluster.kubectl(
            "-n", namespace, "get", "tj", "deep", "-o", "jsonpath={.status}"
        ).stdout
        return json.loads(text) if text else {}

    wait_until(lambda: deep_status().get("state") == "Failed", timeout=120, what="deep to fail")
    status = deep_status()
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "nested" in failed["message"], failed
    assert job_pods(cluster, namespace, "deep") == []
    done = wait_state(cluster, operator, namespace, healthy, state="Succeeded", timeout=600)
    assert done["progress"]["step"] == 100

    pods = job_pods(cluster, namespace, healthy)
    assert pods
    for pod in pods:
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not any(
            v["name"].startswith("kube-api-access") for v in pod["spec"].get("volumes", [])
        )
    uid = get_job(cluster, namespace, healthy)["metadata"]["uid"]
    policy = cluster.api.get(
        f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{healthy}-workers"
    )
    assert policy["metadata"]["ownerReferences"][0]["uid"] == uid  # deleted with the job
    assert policy["spec"]["podSelector"] == {"matchLabels": {"kubetrain.io/job-name": healthy}}
