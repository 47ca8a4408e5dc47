"""MinIO and Prometheus of the local cluster: reachable from the host and from pods."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from localkube.cluster import Cluster, Kubectl
from localkube.services import MinioServer, PrometheusServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Uploads $BODY to s3://$BUCKET/$KEY with boto3, from inside the pod.
_UPLOAD = """
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                  aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
s3.put_object(Bucket=os.environ["BUCKET"], Key=os.environ["KEY"], Body=os.environ["BODY"].encode())
print("uploaded", flush=True)
"""

# Serves one gauge with the value of $VALUE at /metrics on $PORT.
_EXPORTER = """
import http.server, os
body = "# TYPE kubetrain_harness_probe gauge\\nkubetrain_harness_probe {}\\n".format(
    os.environ["VALUE"]).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def _minio(cluster: Cluster) -> MinioServer:
    assert cluster.minio is not None, "the session cluster runs MinIO"
    return cluster.minio


def _prometheus(cluster: Cluster) -> PrometheusServer:
    assert cluster.prometheus is not None, "the session cluster runs Prometheus"
    return cluster.prometheus


def _pod(name: str, script: str, env: dict[str, str], **metadata: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, **metadata},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "kubetrain/test:none",
                        "command": ["python", "-c", script],
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                    }
                ],
            },
        }
    )


def test_minio_round_trip_survives_a_restart(cluster: Cluster, namespace: str) -> None:
    minio = _minio(cluster)
    s3 = minio.client()
    key, body = f"{namespace}/blob", secrets.token_bytes(4096)

    s3.put_object(Bucket=cluster.bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == body

    cluster.stop_minio()
    try:
        with pytest.raises((BotoCoreError, ClientError)):
            s3.put_object(Bucket=cluster.bucket, Key=f"{key}-down", Body=b"x")
    finally:
        cluster.start_minio()
    assert minio.client().get_object(Bucket=cluster.bucket, Key=key)["Body"].read() == body


def test_pod_uploads_to_minio(cluster: Cluster, namespace: str, kubectl: Kubectl) -> None:
    minio = _minio(cluster)
    key, body = f"{namespace}/from-pod", secrets.token_hex(16)
    env = {
        "S3_ENDPOINT": minio.endpoint,
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
        "BUCKET": cluster.bucket,
        "KEY": key,
        "BODY": body,
    }
    kubectl("create", "-n", namespace, "-f", "-", input_text=_pod("uploader", _UPLOAD, env))

    cluster.wait_for_pod(namespace, "uploader", phases=("Succeeded",), timeout=120)
    got = minio.client().get_object(Bucket=cluster.bucket, Key=key)["Body"].read()
    assert got.decode() == body


def test_prometheus_scrapes_an_annotated_pod(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    prometheus = _prometheus(cluster)
    value = secrets.randbelow(10**6)
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "9100"}
    manifest = _pod(
        "exporter", _EXPORTER, {"VALUE": str(value), "PORT": "9100"}, annotations=annotations
    )
    kubectl("create", "-n", namespace, "-f", "-", input_text=manifest)
    cluster.wait_for_pod(namespace, "exporter")

    selector = f'{{namespace="{namespace}",pod="exporter"}}'
    samples: list[dict[str, Any]] = []

    def scraped() -> bool:
        samples[:] = prometheus.query(f"kubetrain_harness_probe{selector}")
        return bool(samples)

    wait_until(scraped, timeout=90, what="Prometheus to scrape the pod", interval=1.0)
    assert float(samples[0]["value"][1]) == value
    up = prometheus.query(f"up{selector}")
    assert [float(s["value"][1]) for s in up] == [1.0]
