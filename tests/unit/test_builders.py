"""Pure builders: spec -> Service, ConfigMap, worker Pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain_core.api import RecoveryStatus, TrainingJob
from kubetrain_core.config import parse_config
from kubetrain_operator import builders
from kubetrain_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(default_image="example/trainer:1", torchrun=["torchrun"])
NAME = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())["metadata"]["name"]


def _job(**spec: Any) -> TrainingJob:
    data = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    data["metadata"] |= {"namespace": "team-a", "uid": "1234-abcd"}
    data["spec"] |= spec
    return TrainingJob.model_validate(data)


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    env = pod["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def test_pod_runs_torchrun_with_static_rendezvous_on_pod_zero() -> None:
    job = _job()
    pod = builders.build_pod(job, 1, RecoveryStatus(attempt=2), SETTINGS)
    command = pod["spec"]["containers"][0]["command"]
    name = NAME
    assert command[:6] == [
        "torchrun",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--node-rank=1",
        f"--master-addr={name}-0.{name}",
        "--master-port=29400",
    ]
    assert command[-3:] == ["train", "--config", "/etc/kubetrain/trainer.yaml"][-3:]
    assert pod["metadata"]["name"] == f"{name}-1"
    assert pod["spec"]["hostname"] == f"{name}-1"
    assert pod["spec"]["subdomain"] == name
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"][builders.ATTEMPT_LABEL] == "2"
    assert pod["metadata"]["labels"][builders.INDEX_LABEL] == "1"


def test_pod_is_owned_by_the_job_and_reports_termination_messages() -> None:
    pod = builders.build_pod(_job(), 0, RecoveryStatus(), SETTINGS)
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "1234-abcd" and owner["controller"] is True
    container = pod["spec"]["containers"][0]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["image"] == "example/trainer:1"
    assert container["resources"]["requests"]["cpu"] == "1"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    other = builders.build_pod(_job(), 1, RecoveryStatus(), SETTINGS)
    assert "prometheus.io/scrape" not in other["metadata"]["annotations"]


def test_tolerations_follow_node_failure_toleration_seconds() -> None:
    job = _job(faultTolerance={"nodeFailureTolerationSeconds": 7})
    pod = builders.build_pod(job, 0, RecoveryStatus(), SETTINGS)
    tolerations = {t["key"]: t for t in pod["spec"]["tolerations"]}
    assert tolerations["node.kubernetes.io/not-ready"]["tolerationSeconds"] == 7
    assert tolerations["node.kubernetes.io/unreachable"]["effect"] == "NoExecute"


def test_env_carries_the_contract_and_recovery_state() -> None:
    job = _job(
        env=[{"name": "EXTRA", "value": "1"}],
        checkpoint={"uri": "s3://ckpt/run", "s3": {"credentialsSecretName": "s3-creds"}},
    )
    recovery = RecoveryStatus(
        attempt=3, rollbackBeforeStep=50, rollbackId="u/3", skipBatches="51-53", lrScale=0.5
    )
    env = _env(builders.build_pod(job, 0, recovery, SETTINGS))
    assert env["KUBETRAIN_JOB_NAME"] == NAME
    assert env["KUBETRAIN_NAMESPACE"] == "team-a"
    assert env["KUBETRAIN_RESTART_COUNT"] == "3"
    assert env["KUBETRAIN_ROLLBACK_BEFORE"] == "50"
    assert env["KUBETRAIN_ROLLBACK_ID"] == "u/3"
    assert env["KUBETRAIN_SKIP_BATCHES"] == "51-53"
    assert float(env["KUBETRAIN_LR_SCALE"]) == 0.5
    # The config travels only in the ConfigMap: no env var overrides any of it.
    assert not {"KUBETRAIN_CHECKPOINT_URI", "KUBETRAIN_METRICS_PORT"} & env.keys()
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["EXTRA"] == "1"


def test_no_rollback_request_without_a_rollback() -> None:
    env = _env(builders.build_pod(_job(), 0, RecoveryStatus(), SETTINGS))
    assert "KUBETRAIN_ROLLBACK_BEFORE" not in env and "KUBETRAIN_ROLLBACK_ID" not in env


def test_operator_default_checkpoint_uri_and_credentials() -> None:
    settings = Settings(
        default_checkpoint_uri="s3://kubetrain/",
        default_s3_endpoint="http://minio:9000",
        default_credentials_secret="kubetrain-s3",
    )
    job = _job()
    env = _env(builders.build_pod(job, 0, RecoveryStatus(), settings))
    # A re-created job (new UID) gets a store of its own.
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "kubetrain-s3"
    config = builders.build_configmap(job, settings)["data"]["trainer.yaml"]
    cfg = parse_config(yaml.safe_load(config))
    assert cfg.checkpoint.uri == f"s3://kubetrain/team-a/{NAME}/1234-abcd"
    assert cfg.checkpoint.s3.endpoint == "http://minio:9000"


def test_configmap_holds_the_trainer_config_with_job_level_settings() -> None:
    job = _job(checkpoint={"uri": "file:///shared/ckpt", "intervalSteps": 7, "keepLast": 2})
    cm = builders.build_configmap(job, SETTINGS)
    cfg = parse_config(yaml.safe_load(cm["data"]["trainer.yaml"]))
    assert cfg.checkpoint.uri == "file:///shared/ckpt"
    assert cfg.checkpoint.interval_steps == 7
    assert cfg.checkpoint.keep_last == 2
    assert cfg.training.max_steps == 300
    assert cm["metadata"]["name"] == f"{NAME}-config"


def test_service_is_headless_and_publishes_not_ready_addresses() -> None:
    svc = builders.build_service(_job())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {builders.JOB_LABEL: NAME}
    assert {p["port"] for p in svc["spec"]["ports"]} == {29400, 9090}


def test_template_overrides_merge_without_taking_over_the_container() -> None:
    job = _job(
        template={
            "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
            "spec": {
                "nodeSelector": {"pool": "gpu"},
                "priorityClassName": "high",
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "restartPolicy": "Always",
            },
        }
    )
    pod = builders.build_pod(job, 0, RecoveryStatus(), SETTINGS)
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert {"key": "gpu", "operator": "Exists"} in pod["spec"]["tolerations"]
    assert {v["name"] for v in pod["spec"]["volumes"]} == {
        "kubetrain-config",
        builders.SCRATCH_VOLUME,
        "data",
    }
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["annotations"]["note"] == "x"


@pytest.mark.parametrize(
    ("resources", "procs", "expected"),
    [
        ({"limits": {"nvidia.com/gpu": 4}}, "auto", 4),
        ({}, "auto", 1),
        ({"limits": {"nvidia.com/gpu": 8}}, 2, 2),
    ],
)
def test_nproc_per_node(resources: dict[str, Any], procs: Any, expected: int) -> None:
    job = _job(resources=resources, numProcPerNode=procs)
    command = builders.torchrun_command(job, 0, SETTINGS)
    assert f"--nproc-per-node={expected}" in command


def test_default_command_needs_only_python_and_working_dir_is_optional() -> None:
    pod = builders.build_pod(_job(), 0, RecoveryStatus(), Settings())
    container = pod["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert "workingDir" not in container  # the image's WORKDIR
    pod = builders.build_pod(_job(), 0, RecoveryStatus(), Settings(working_dir="/src"))
    assert pod["spec"]["containers"][0]["workingDir"] == "/src"


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = builders.build_pod(_job(), 0, RecoveryStatus(), SETTINGS)
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = spec["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not any("hostPath" in v for v in spec["volumes"])


def test_everything_the_trainer_writes_is_on_a_writable_empty_dir() -> None:
    """readOnlyRootFilesystem holds only if the run dir, tempfiles and HOME are scratch."""
    pod = builders.build_pod(_job(), 1, RecoveryStatus(), SETTINGS)
    spec = pod["spec"]
    container = spec["containers"][0]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    writable = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if m["name"] in empty_dirs and not m.get("readOnly")
    ]
    env = _env(pod)
    for path in (env["KUBETRAIN_RUN_DIR"], env["HOME"], "/tmp"):
        assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), path


def test_user_volumes_come_after_the_operator_volumes() -> None:
    extra = {"name": "data", "emptyDir": {}}
    pod = builders.build_pod(
        _job(template={"spec": {"volumes": [extra]}}), 0, RecoveryStatus(), SETTINGS
    )
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert names == ["kubetrain-config", builders.SCRATCH_VOLUME, "data"]
