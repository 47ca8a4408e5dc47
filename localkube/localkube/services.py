"""Long-running processes of the harness: a generic launcher, MinIO and Prometheus."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localkube.poller import Poller

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a server started later.

    Chosen below the kernel's ephemeral range, so an outgoing connection made meanwhile
    (a kubelet's, a trainer's) cannot take it before the server binds, and never handed
    out twice by this process."""
    low, high = _ephemeral_range()
    span = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for _ in range(200):
        port = random.choice(span)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} outside the ephemeral range {low}-{high}")


def _die_with_parent(argv: Sequence[str]) -> list[str]:
    # If the harness is SIGKILLed, its components die with it instead of
    # holding ports and namespaces. setpriv, not preexec_fn: the harness runs
    # threads (kubelets), and preexec_fn is unsafe then.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


class ManagedProcess:
    """One component process; its stdout and stderr go to a log file (appended on restart)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.env is not None else None
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                _die_with_parent(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                # Own session: Ctrl-C in a terminal reaches the harness only,
                # which then stops components in order.
                start_new_session=True,
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ensure_running(self) -> None:
        """Raise with the end of the log when the process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self._proc.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    processes: Sequence[ManagedProcess] = (),
    interval: float = 0.2,
) -> None:
    """Poll `check` until it is true; fail fast when a watched process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in processes:
            proc.ensure_running()
        if check():
            return
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name} ({p.log_path}):\n{p.log_tail()}" for p in processes)
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0, *, verify: bool = True) -> bool:
    """True when `url` answers 2xx; connection errors and other codes are False.
    `verify=False`: an https server's certificate is not checked (a self-signed one)."""
    context = None
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            status: int = resp.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False


class MinioServer:
    """`minio server` with a root user; S3 endpoint on `host`, console on loopback."""

    def __init__(
        self,
        *,
        binary: Path,
        data_dir: Path,
        log_path: Path,
        host: str,
        access_key: str = "kubetrain",
        secret_key: str = "kubetrain-secret",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = data_dir
        self.process = ManagedProcess(
            "minio",
            [
                str(binary),
                "server",
                "--quiet",
                "--address",
                f"{host}:{self.port}",
                "--console-address",
                f"127.0.0.1:{free_port()}",
                str(data_dir),
            ],
            log_path,
            env={
                "MINIO_ROOT_USER": access_key,
                "MINIO_ROOT_PASSWORD": secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CI_CD": "on",
            },
        )

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (the cluster starts others meanwhile)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: http_ok(f"{self.endpoint}/minio/health/ready"),
            timeout=timeout,
            what="MinIO to be ready",
            processes=[self.process],
        )

    def stop(self) -> None:
        self.process.stop()

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing, no retries to mask faults)."""
        import boto3  # here: only tests that touch S3 need boto3 loaded
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


# Debian's Prometheus is built without kubernetes_sd_configs (Debian drops the
# client-go dependency), so the harness discovers pods itself: it lists them
# through the API server and writes Prometheus file_sd targets, applying the
# usual annotations. Prometheus then scrapes the pods for real.
_SCRAPE = "prometheus.io/scrape"
_PORT = "prometheus.io/port"
_PATH = "prometheus.io/path"


def scrape_targets(pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for running pods annotated `prometheus.io/scrape: "true"`
    with a `prometheus.io/port` (and optionally `prometheus.io/path`)."""
    groups = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        annotations = meta.get("annotations") or {}
        port, ip = annotations.get(_PORT, ""), status.get("podIP")
        if annotations.get(_SCRAPE) != "true" or not port.isdigit() or not ip:
            continue
        if status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        groups.append(
            {
                "targets": [f"{ip}:{port}"],
                "labels": {
                    "namespace": meta["namespace"],
                    "pod": meta["name"],
                    "node": pod.get("spec", {}).get("nodeName", ""),
                    "__metrics_path__": annotations.get(_PATH, "/metrics"),
                },
            }
        )
    return sorted(groups, key=lambda g: g["targets"])


def prometheus_config(targets_dir: Path, scrape_interval: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "scrape_timeout": scrape_interval,
                "file_sd_configs": [
                    {"files": [str(targets_dir / "*.json")], "refresh_interval": scrape_interval}
                ],
            }
        ],
    }


class PodTargetWriter:
    """Keeps `<dir>/pods.json` in step with the annotated pods, polling every second."""

    def __init__(
        self, list_pods: Callable[[], Sequence[Mapping[str, Any]]], directory: Path
    ) -> None:
        self._list_pods = list_pods
        self._path = directory / "pods.json"
        self._written = ""
        self._poller = Poller(self._sync, name="pod-targets")

    def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._write(json.dumps([]))
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def _sync(self) -> None:
        text = json.dumps(scrape_targets(self._list_pods()), indent=1)
        if text != self._written:
            self._write(text)

    def _write(self, text: str) -> None:
        # Rename, so that Prometheus never reads a half-written file.
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self._path)
        self._written = text


class PrometheusServer:
    """Prometheus scraping annotated pods every ~2 s (targets from PodTargetWriter)."""

    def __init__(
        self,
        *,
        binary: Path,
        directory: Path,
        log_path: Path,
        list_pods: Callable[[], Sequence[Mapping[str, Any]]],
        host: str = "127.0.0.1",
        scrape_interval: str = "2s",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        directory.mkdir(parents=True, exist_ok=True)
        targets_dir = directory / "targets"
        self.targets = PodTargetWriter(list_pods, targets_dir)
        config_path = directory / "prometheus.yml"
        # JSON is valid YAML, so no YAML writer is needed.
        config_path.write_text(
            json.dumps(prometheus_config(targets_dir, scrape_interval), indent=2)
        )
        self.process = ManagedProcess(
            "prometheus",
            [
                str(binary),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={host}:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            log_path,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process and the target writer without waiting."""
        self.targets.start()
        self.process.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: http_ok(f"{self.url}/-/ready"),
            timeout=timeout,
            what="Prometheus to be ready",
            processes=[self.process],
        )

    def stop(self) -> None:
        self.targets.stop()
        self.process.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the `result` vector of the HTTP API."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query (what a dashboard panel runs); returns the `result` matrix."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:  # 400 on a bad expression: say which
            raise RuntimeError(f"Prometheus query {expr!r} failed: {err.read()!r}") from err
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
