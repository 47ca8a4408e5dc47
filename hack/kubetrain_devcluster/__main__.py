"""`python -m kubetrain_devcluster up` (`make dev-cluster`): kubetrain on a local cluster.

Prints `export KUBECONFIG=...` (and the MinIO and Prometheus addresses) once the
cluster is ready, then waits; Ctrl-C or SIGTERM stops every component and
removes the state dir, the network namespaces and the bridge.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from kubetrain_devcluster import operator
from kubetrain_devcluster.project import cluster as kubetrain_cluster
from localkube.cluster import Cluster, default_nodes


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain_devcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local cluster and run until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3, help="number of process kubelets")
    # Outside the tests' kt0-kt9 / 10.213-10.222, so a dev cluster and tests can coexist.
    up.add_argument("--network-name", default="ktdev", help="bridge name of the pod network")
    up.add_argument("--pod-cidr", default="10.212.0.0/16", help="pod addresses")
    up.add_argument("--no-minio", action="store_true", help="do not start MinIO")
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument(
        "--no-operator",
        action="store_true",
        help="do not install the CRD or run the operator (it needs MinIO for checkpoints)",
    )
    up.add_argument(
        "--apply",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="kubectl apply -f PATH once ready (repeatable; e.g. crds/)",
    )
    up.add_argument(
        "--env-file", type=Path, help="also write the export lines to this file (to source)"
    )
    return parser.parse_args(argv)


def _exports(cluster: Cluster) -> list[str]:
    lines = [f"export KUBECONFIG={cluster.kubeconfig}"]
    if cluster.minio is not None:
        lines += [
            f"export AWS_ENDPOINT_URL={cluster.minio.endpoint}",
            f"export AWS_ACCESS_KEY_ID={cluster.minio.access_key}",
            f"export AWS_SECRET_ACCESS_KEY={cluster.minio.secret_key}",
            f"export KUBETRAIN_TEST_BUCKET={cluster.bucket}",
        ]
    if cluster.prometheus is not None:
        lines.append(f"export PROMETHEUS_URL={cluster.prometheus.url}")
    return lines


def _start_operator(cluster: Cluster) -> operator.OperatorProcess:
    """CRD, RBAC, the S3 Secret in `default`, and the operator from source under its identity."""
    operator.install(cluster)
    operator.create_s3_secret(cluster, "default")
    process = operator.OperatorProcess(cluster, Path(tempfile.mkdtemp(prefix="kubetrain-op-")))
    process.write_kubeconfig()
    process.start()
    print(
        f"# operator running as {operator.NAMESPACE}/{operator.SERVICE_ACCOUNT}, "
        f"log {process.log_path}, metrics :{process.metrics_port}/metrics",
        file=sys.stderr,
        flush=True,
    )
    return process


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so the `with` block cleans up.
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    cluster = kubetrain_cluster(
        default_nodes(args.nodes),
        network=(args.network_name, args.pod_cidr),
        minio=not args.no_minio,
        prometheus=not args.no_prometheus,
    )
    op: operator.OperatorProcess | None = None
    try:
        with cluster:
            if not args.no_operator and cluster.minio is not None:
                op = _start_operator(cluster)
            for path in args.apply:
                print(cluster.kubectl("apply", "-f", str(path)).stdout, end="", file=sys.stderr)
            exports = _exports(cluster)
            if args.env_file is not None:
                args.env_file.write_text("\n".join(exports) + "\n")
            print("\n".join(exports), flush=True)
            print(
                f"# cluster ready in {cluster.startup_seconds:.1f} s "
                f"(API server {cluster.api_url}, logs in {cluster.logs_dir}); "
                "Ctrl-C stops it and cleans up",
                file=sys.stderr,
                flush=True,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("# stopped; cleaned up", file=sys.stderr)
    finally:
        if op is not None:
            op.kill()
        if args.env_file is not None:
            args.env_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "up":
        return up(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
