"""Pod name resolution without a DNS server: per-pod /etc/hosts files.

The cluster's records (pods with spec.hostname and spec.subdomain, as a headless
Service would publish them) live in one in-process registry shared by every
process kubelet of the harness, the way CoreDNS is shared by every node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CLUSTER_DOMAIN = "cluster.local"

_HOSTS_HEADER = """# Kubernetes-managed hosts file (process kubelet).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class HostRecord:
    """One pod that a headless Service makes resolvable as <hostname>.<subdomain>;
    with an empty hostname, a Service itself (<subdomain> = the Service's name)."""

    namespace: str
    hostname: str
    subdomain: str
    ip: str


def record_names(record: HostRecord, viewer_namespace: str) -> list[str]:
    """The names under which `record` resolves for a pod in `viewer_namespace`."""
    short = f"{record.hostname}.{record.subdomain}" if record.hostname else record.subdomain
    service = f"{short}.{record.namespace}.svc"
    names = [f"{service}.{CLUSTER_DOMAIN}", service]
    if record.namespace == viewer_namespace:
        # What the search path `<ns>.svc.cluster.local` would give a same-namespace pod.
        names.append(short)
    return names


def pod_hostname(pod_name: str, hostname: str | None) -> str:
    """The pod's hostname: spec.hostname, else the pod name (cut to 63 characters)."""
    return (hostname or pod_name)[:63].rstrip("-.")


def render_hosts(
    *,
    namespace: str,
    hostname: str,
    subdomain: str | None,
    pod_ip: str,
    records: Iterable[HostRecord],
) -> str:
    """The /etc/hosts of one pod: localhost, its own names, then the cluster's records."""
    own = [hostname]
    if subdomain:
        own.insert(0, f"{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}")
    lines = [_HOSTS_HEADER, f"{pod_ip}\t{' '.join(own)}\n"]
    ordered = sorted(records, key=lambda r: (r.namespace, r.subdomain, r.hostname, r.ip))
    for record in ordered:
        lines.append(f"{record.ip}\t{' '.join(record_names(record, namespace))}\n")
    return "".join(lines)


def render_resolv_conf(namespace: str) -> str:
    """resolv.conf of a pod: the usual search path, and a nameserver that is not there.

    Names come from /etc/hosts; anything else fails fast on the pod's own loopback
    instead of leaving the pod's network namespace.
    """
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"


Listener = Callable[[], None]


class HostRegistry:
    """Thread-safe set of HostRecords, keyed by owner; listeners hear every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, HostRecord] = {}
        self._listeners: list[Listener] = []

    def publish(self, owner: str, record: HostRecord) -> None:
        with self._lock:
            if self._records.get(owner) == record:
                return
            self._records[owner] = record
        self._notify()

    def withdraw(self, owner: str) -> None:
        with self._lock:
            if self._records.pop(owner, None) is None:
                return
        self._notify()

    def snapshot(self) -> list[HostRecord]:
        with self._lock:
            return list(self._records.values())

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
