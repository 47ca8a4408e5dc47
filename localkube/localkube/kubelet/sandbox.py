"""A pod's sandbox on the host: address, network namespace, /etc files, volume contents.

What a container runtime's "pod sandbox" is: everything the pod's containers
share, set up once before the first container starts and removed when the pod
ends. The containers enter it through the launch spec (kubelet_runtime).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from localkube.api import KubeApi
from localkube.kubelet.dns import HostRecord, render_hosts, render_resolv_conf
from localkube.kubelet.env import PodFacts
from localkube.kubelet.volumes import Mount, VolumeSources, volume_files, volume_source_dir
from localkube.network import PodNetwork

# The user the kubetrain images create (Dockerfile: useradd --uid 65532 kubetrain). Pods
# see the host's /etc/passwd and /etc/group plus this entry, as they would see the image's:
# programs that look their uid up (getpass.getuser(), kopf's identity) find it.
IMAGE_USER = "kubetrain"
IMAGE_UID = 65532


def with_image_user(text: str, line: str) -> str:
    """`text` (a passwd or group file) with `line` added unless its id is taken."""
    wanted = line.split(":")[2]
    if any(row.split(":")[2:3] == [wanted] for row in text.splitlines()):
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"


class PodObjects:
    """The API objects a pod's env and volumes read (Secrets, ConfigMaps, its token)."""

    def __init__(self, api: KubeApi, namespace: str, name: str, uid: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.uid = uid

    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.api.get_or_none(
            f"/api/v1/namespaces/{self.namespace}/{kind}/{name}"
        )
        return obj

    def secret_data(self, name: str) -> Mapping[str, str] | None:
        obj = self._get("secrets", name)
        return None if obj is None else dict(obj.get("data") or {})

    def configmap_data(self, name: str) -> Mapping[str, str] | None:
        obj = self._get("configmaps", name)
        return None if obj is None else dict(obj.get("data") or {})

    def secret_bytes(self, name: str) -> Mapping[str, bytes] | None:
        data = self.secret_data(name)
        return None if data is None else {k: base64.b64decode(v) for k, v in data.items()}

    def configmap_bytes(self, name: str) -> Mapping[str, bytes] | None:
        obj = self._get("configmaps", name)
        if obj is None:
            return None
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def token(self, service_account: str, audience: str, expiration: int) -> str:
        """A service-account token bound to this pod (TokenRequest API)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(expiration, 600),  # the API's minimum
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{service_account}/token"
        result = self.api.request("POST", path, body)
        token: str = result["status"]["token"]
        return token


class PodSandbox:
    """Set up in steps that may be retried (setup raises until everything is there)."""

    def __init__(
        self,
        *,
        network: PodNetwork,
        objects: PodObjects,
        run_dir: Path,
        hostname: str,
        host_ip: str,
        node_name: str,
        ca_bytes: bytes,
        current_pod: Callable[[], dict[str, Any]],
    ) -> None:
        self.network = network
        self.objects = objects
        self.run_dir = run_dir
        self.hostname = hostname
        self.host_ip = host_ip
        self.node_name = node_name
        self.ca_bytes = ca_bytes
        self._pod = current_pod
        self.ip = ""
        self.netns: str | None = None
        self._hosts_lock = threading.Lock()  # other pods' threads rewrite our hosts too

    @property
    def ready(self) -> bool:
        return self.netns is not None

    @property
    def netns_path(self) -> Path:
        if self.netns is None:
            raise RuntimeError("pod sandbox is not set up")
        return self.network.namespace_path(self.netns)

    def facts(self) -> PodFacts:
        return PodFacts(self._pod(), self.ip, self.host_ip, self.node_name)

    def setup(self) -> None:
        """Address, files, volumes, then the network namespace and the pod's DNS record.

        Raises VolumeError, EnvError, ApiError, NetworkError or OSError while
        something is missing (a Secret not created yet); call again later.
        """
        if not self.ip:
            self.ip = self.network.allocate_ip(self.objects.uid)
        for sub in ("etc", "volumes", "termination", "specs"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_etc()
        self._write_volumes()
        self.netns = self.network.create_namespace(self.ip)
        spec = self._pod()["spec"]
        if spec.get("hostname") and spec.get("subdomain"):
            record = HostRecord(
                self.objects.namespace, spec["hostname"], spec["subdomain"], self.ip
            )
            self.network.names.publish(self.objects.uid, record)
        self.network.names.subscribe(self.write_hosts)
        self.write_hosts()

    def file_mounts(self) -> list[Mount]:
        """The per-pod /etc files every container of the pod sees."""
        etc = self.run_dir / "etc"
        return [
            Mount(str(etc / "hosts"), "/etc/hosts", False, True),
            Mount(str(etc / "hostname"), "/etc/hostname", False, True),
            Mount(str(etc / "resolv.conf"), "/etc/resolv.conf", False, True),
            Mount(str(etc / "passwd"), "/etc/passwd", True, True),
            Mount(str(etc / "group"), "/etc/group", True, True),
        ]

    def _write_etc(self) -> None:
        etc = self.run_dir / "etc"
        (etc / "hostname").write_text(self.hostname + "\n")
        (etc / "resolv.conf").write_text(render_resolv_conf(self.objects.namespace))
        user = f"{IMAGE_USER}:x:{IMAGE_UID}:{IMAGE_UID}::/tmp:/usr/sbin/nologin"
        passwd = with_image_user(Path("/etc/passwd").read_text(), user)
        (etc / "passwd").write_text(passwd)
        group = with_image_user(Path("/etc/group").read_text(), f"{IMAGE_USER}:x:{IMAGE_UID}:")
        (etc / "group").write_text(group)
        for name in ("passwd", "group"):
            (etc / name).chmod(0o644)
        if not (etc / "hosts").exists():
            (etc / "hosts").write_text("")

    def write_hosts(self) -> None:
        """Render /etc/hosts from the cluster's current name records."""
        if not self.ip:
            return
        spec = self._pod()["spec"]
        text = render_hosts(
            namespace=self.objects.namespace,
            hostname=self.hostname,
            subdomain=spec.get("subdomain") if spec.get("hostname") else None,
            pod_ip=self.ip,
            records=self.network.names.snapshot(),
        )
        path = self.run_dir / "etc" / "hosts"
        # In place (same inode): the bind mount inside the pod sees the new content.
        with self._hosts_lock, contextlib.suppress(FileNotFoundError), path.open("r+") as out:
            out.truncate(0)
            out.write(text)

    def _write_volumes(self) -> None:
        spec = self._pod()["spec"]
        account = spec.get("serviceAccountName") or "default"
        sources = VolumeSources(
            facts=self.facts(),
            get_secret=self.objects.secret_bytes,
            get_configmap=self.objects.configmap_bytes,
            get_token=lambda audience, seconds: self.objects.token(account, audience, seconds),
            ca_bytes=self.ca_bytes,
        )
        for volume in spec.get("volumes") or []:
            files = volume_files(volume, sources)
            if "hostPath" in volume:
                continue
            target = volume_source_dir(volume, self.run_dir / "volumes")
            target.mkdir(parents=True, exist_ok=True)
            if files is None:  # emptyDir: writable by any user, as in Kubernetes
                target.chmod(0o777)
                continue
            for rel, (content, mode) in files.items():
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                path.chmod(mode)

    def teardown(self) -> None:
        """Withdraw the DNS record, kill what is left in the namespace, free the address."""
        self.network.names.unsubscribe(self.write_hosts)
        self.network.names.withdraw(self.objects.uid)
        if self.netns is not None:
            self.network.delete_namespace(self.netns)
            self.netns = None
        self.network.release_ip(self.objects.uid)
        shutil.rmtree(self.run_dir, ignore_errors=True)
