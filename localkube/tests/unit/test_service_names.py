"""Pure parts of the harness's pod environment: Service names, the image's user and
the images' entrypoints."""

from __future__ import annotations

from typing import Any

from localkube.images import dockerfile_entrypoints, image_repository
from localkube.kubelet.dns import HostRecord, record_names, render_hosts
from localkube.kubelet.env import expand_command
from localkube.kubelet.sandbox import with_image_user
from localkube.service_names import service_records


def _service(name: str, *, cluster_ip: str = "10.96.0.9", selector: bool = True) -> Any:
    spec: dict[str, Any] = {"clusterIP": cluster_ip, "ports": [{"port": 8080}]}
    if selector:
        spec["selector"] = {"app": name}
    return {"metadata": {"namespace": "ops", "name": name}, "spec": spec}


def _slice(service: str, *endpoints: tuple[str, bool | None]) -> Any:
    return {
        "metadata": {"namespace": "ops", "labels": {"kubernetes.io/service-name": service}},
        "endpoints": [
            {"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
            for ip, ready in endpoints
        ],
    }


def test_a_cluster_ip_service_resolves_to_a_ready_endpoint() -> None:
    records = service_records(
        [_service("op")],
        [_slice("op", ("10.213.0.7", False), ("10.213.0.9", True), ("10.213.0.8", None))],
    )
    assert records == {"service:ops/op": HostRecord("ops", "", "op", "10.213.0.8")}


def test_headless_selectorless_and_endpointless_services_get_no_record() -> None:
    services = [
        _service("headless", cluster_ip="None"),
        _service("manual", selector=False),
        _service("idle"),
    ]
    slices = [_slice("headless", ("10.213.0.2", True)), _slice("manual", ("10.213.0.3", True))]
    assert service_records(services, slices) == {}


def test_service_record_names_and_hosts_line() -> None:
    record = HostRecord("ops", "", "op", "10.213.0.8")
    assert record_names(record, "ops") == ["op.ops.svc.cluster.local", "op.ops.svc", "op"]
    assert record_names(record, "other") == ["op.ops.svc.cluster.local", "op.ops.svc"]
    hosts = render_hosts(
        namespace="other", hostname="p", subdomain=None, pod_ip="10.213.0.4", records=[record]
    )
    assert "10.213.0.8\top.ops.svc.cluster.local op.ops.svc\n" in hosts
    # Pod records keep their <hostname>.<subdomain> names.
    pod = HostRecord("ops", "w-0", "w", "10.213.0.5")
    assert record_names(pod, "ops")[-1] == "w-0.w"


def test_the_image_user_is_added_once_and_never_over_a_taken_id() -> None:
    line = "kubetrain:x:65532:65532::/tmp:/usr/sbin/nologin"
    base = "root:x:0:0:root:/root:/bin/bash\n"
    added = with_image_user(base, line)
    assert added == base + line + "\n"
    assert with_image_user(added, line) == added
    taken = "nonroot:x:65532:65532::/home/nonroot:/bin/sh"
    assert with_image_user(taken, line) == taken
    assert with_image_user("", line) == line + "\n"


def test_entrypoints_come_from_the_dockerfile_stages() -> None:
    text = (
        "FROM python:3.11 AS wheel\nRUN true\n"
        'FROM python:3.11 AS operator\nENTRYPOINT ["kubetrain"]\nCMD ["operator"]\n'
        'FROM base AS trainer\nENTRYPOINT ["tini", "--", "kubetrain"]\n'
    )
    assert dockerfile_entrypoints(text) == {
        "operator": ["kubetrain"],
        "trainer": ["tini", "--", "kubetrain"],
    }


def test_image_repository_drops_registry_tag_and_digest() -> None:
    assert image_repository("ghcr.io/kubetrain/kubetrain-operator:0.1.0") == "kubetrain-operator"
    assert image_repository("localhost:5000/kubetrain-trainer@sha256:ab") == "kubetrain-trainer"
    assert image_repository("busybox") == "busybox"


def test_a_container_without_command_runs_the_entrypoint_with_its_args() -> None:
    argv = expand_command(None, ["operator", "--namespace=$(NS)"], {"NS": "a"}, ["kubetrain"])
    assert argv == ["kubetrain", "operator", "--namespace=a"]
    assert expand_command(["python"], ["-V"], {}, ["kubetrain"]) == ["python", "-V"]
