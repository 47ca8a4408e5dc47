"""Service names for pods, without kube-proxy or a DNS server.

A ClusterIP Service's name (`<svc>.<ns>.svc`, `<svc>` in its own namespace)
resolves, through each pod's /etc/hosts, to the address of one ready endpoint
of that Service, as seen in its EndpointSlices. There are no virtual IPs: a
client reaches that pod directly, so this works where the Service's port equals
the target port (the operator's health and metrics ports do). Headless Services
are left to their pods' hostname/subdomain records (kubelet_dns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from localkube.kubelet.dns import HostRecord, HostRegistry
from localkube.poller import Poller

_SERVICE_LABEL = "kubernetes.io/service-name"


def service_records(
    services: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]]
) -> dict[str, HostRecord]:
    """owner key -> record, for every ClusterIP Service with a ready endpoint."""
    ready: dict[tuple[str, str], list[str]] = {}
    for item in slices:
        meta = item.get("metadata", {})
        service = (meta.get("labels") or {}).get(_SERVICE_LABEL)
        if not service:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ready.setdefault((meta.get("namespace", ""), service), [])
            addresses.extend(endpoint.get("addresses") or [])
    records: dict[str, HostRecord] = {}
    for svc in services:
        meta, spec = svc.get("metadata", {}), svc.get("spec", {})
        if spec.get("clusterIP") in (None, "", "None") or not spec.get("selector"):
            continue
        key = (meta["namespace"], meta["name"])
        addresses = sorted(ready.get(key, []))
        if addresses:
            records[f"service:{key[0]}/{key[1]}"] = HostRecord(key[0], "", key[1], addresses[0])
    return records


class ServiceNames:
    """Publishes service_records into the pods' name registry, polling every second."""

    def __init__(
        self,
        names: HostRegistry,
        list_services: Callable[[], Sequence[Mapping[str, Any]]],
        list_slices: Callable[[], Sequence[Mapping[str, Any]]],
    ) -> None:
        self._names = names
        self._list_services = list_services
        self._list_slices = list_slices
        self._published: dict[str, HostRecord] = {}
        self._poller = Poller(self._sync, name="service-names")

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def _sync(self) -> None:
        records = service_records(self._list_services(), self._list_slices())
        for owner in set(self._published) - set(records):
            self._names.withdraw(owner)
        for owner, record in records.items():
            self._names.publish(owner, record)
        self._published = records
