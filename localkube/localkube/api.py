"""The one JSON client of the API server: for the kubelets, the cluster and tests.

Requests go through urllib3 and speak plain dicts, which keeps the kubelet's logic
on the data the API server sends and independent of the generated client's
internals, which change between releases; `from_kubeconfig` reads a kubeconfig
with the `kubernetes` client's loader (server, CA, client certificate or token).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """The API server answered with an error status, or could not be reached."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"API server answered {status}: {body[:300]}")
        self.status = status


class KubeApi:
    """Raw JSON requests with one identity (a client certificate or a token); thread-safe."""

    def __init__(
        self,
        server: str,
        *,
        ca_file: str | None,
        cert_file: str | None = None,
        key_file: str | None = None,
        token: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._server = server.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token.removeprefix('Bearer ')}"
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=16,
            cert_reqs="CERT_REQUIRED" if ca_file else "CERT_NONE",
            ca_certs=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
        self._timeout = timeout
        self._lock = threading.Lock()
        self._watches: list[urllib3.BaseHTTPResponse] = []

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, *, timeout: float = 15.0) -> KubeApi:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        token = (cfg.api_key or {}).get("authorization")
        return cls(
            str(cfg.host),
            ca_file=cfg.ssl_ca_cert if cfg.verify_ssl else None,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            token=str(token) if token else None,
            timeout=timeout,
        )

    def _url(self, path: str, query: dict[str, str] | None) -> str:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self._server}{path}{suffix}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded body (JSON, else text) or raise ApiError
        (status 0: the server could not be reached)."""
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self._pool.request(
                method,
                self._url(path, query),
                body=data,
                headers=headers,
                timeout=urllib3.Timeout(total=timeout or self._timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as err:
            raise ApiError(0, f"{type(err).__name__}: {err}") from err
        if resp.status >= 300:
            raise ApiError(resp.status, resp.data.decode(errors="replace"))
        try:
            return json.loads(resp.data) if resp.data else None
        except ValueError:
            return resp.data.decode(errors="replace")  # /readyz, /healthz: plain text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def create_or_replace(self, collection: str, body: dict[str, Any]) -> None:
        """POST `body` into `collection`; one left there by a harness that was killed is
        taken over (PUT at its resourceVersion)."""
        try:
            self.request("POST", collection, body)
        except ApiError as err:
            if err.status != 409:
                raise
            path = f"{collection}/{body['metadata']['name']}"
            body["metadata"]["resourceVersion"] = self.get(path)["metadata"]["resourceVersion"]
            self.request("PUT", path, body)

    def watch(
        self, path: str, query: dict[str, str], *, timeout_seconds: int = 60
    ) -> Iterator[dict[str, Any]]:
        """Watch events (dicts with type and object) until the server ends the stream."""
        params = {**query, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        try:
            resp = self._pool.request(
                "GET",
                self._url(path, params),
                headers=self._headers,
                timeout=urllib3.Timeout(connect=self._timeout, read=timeout_seconds + 15),
                retries=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as err:
            raise ApiError(0, f"{type(err).__name__}: {err}") from err
        if resp.status >= 300:
            body = resp.read().decode(errors="replace")
            resp.release_conn()
            raise ApiError(resp.status, body)
        with self._lock:
            self._watches.append(resp)
        try:
            buffer = b""
            for chunk in resp.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            with self._lock:
                if resp in self._watches:
                    self._watches.remove(resp)
            resp.release_conn()

    def close(self) -> None:
        """End open watches at once (their iterators stop) and drop connections."""
        with self._lock:
            watches = list(self._watches)
        for resp in watches:
            try:
                resp.shutdown()
            except Exception:  # best effort: the stream may be gone already
                resp.close()
        self._pool.clear()


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type `kind` (a Workload's, a pod's), if any."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_true(obj: Mapping[str, Any] | None, kind: str) -> bool:
    cond = condition(obj or {}, kind)
    return cond is not None and cond.get("status") == "True"
