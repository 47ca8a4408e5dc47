"""Per-pod hosts files and the shared name registry of the process kubelet."""

from __future__ import annotations

from localkube.kubelet.dns import (
    HostRecord,
    HostRegistry,
    pod_hostname,
    record_names,
    render_hosts,
    render_resolv_conf,
)


def _lines_for(hosts: str, ip: str) -> list[str]:
    return [line for line in hosts.splitlines() if line.split("\t")[0] == ip]


def test_record_names_depend_on_viewer_namespace() -> None:
    rec = HostRecord("team", "job-0", "job", "10.213.0.5")
    assert record_names(rec, "team") == [
        "job-0.job.team.svc.cluster.local",
        "job-0.job.team.svc",
        "job-0.job",
    ]
    assert record_names(rec, "other") == ["job-0.job.team.svc.cluster.local", "job-0.job.team.svc"]


def test_render_hosts_has_own_name_and_cluster_records() -> None:
    records = [
        HostRecord("team", "job-0", "job", "10.213.0.5"),
        HostRecord("team", "job-1", "job", "10.213.0.6"),
        HostRecord("other", "x-0", "x", "10.213.0.9"),
    ]
    hosts = render_hosts(
        namespace="team", hostname="job-1", subdomain="job", pod_ip="10.213.0.6", records=records
    )
    assert "127.0.0.1\tlocalhost" in hosts
    own = _lines_for(hosts, "10.213.0.6")
    # Its own line first, then its record like everyone else's (short names included).
    assert own == [
        "10.213.0.6\tjob-1.job.team.svc.cluster.local job-1",
        "10.213.0.6\tjob-1.job.team.svc.cluster.local job-1.job.team.svc job-1.job",
    ]
    assert _lines_for(hosts, "10.213.0.5") == [
        "10.213.0.5\tjob-0.job.team.svc.cluster.local job-0.job.team.svc job-0.job"
    ]
    assert _lines_for(hosts, "10.213.0.9") == [
        "10.213.0.9\tx-0.x.other.svc.cluster.local x-0.x.other.svc"
    ]


def test_render_hosts_without_subdomain() -> None:
    hosts = render_hosts(
        namespace="ns", hostname="web", subdomain=None, pod_ip="10.213.0.3", records=[]
    )
    assert _lines_for(hosts, "10.213.0.3") == ["10.213.0.3\tweb"]


def test_pod_hostname() -> None:
    assert pod_hostname("pod-a", None) == "pod-a"
    assert pod_hostname("pod-a", "h") == "h"
    assert len(pod_hostname("p" * 80, None)) == 63


def test_resolv_conf_never_points_outside_the_pod() -> None:
    text = render_resolv_conf("team")
    assert "nameserver 127.0.0.1" in text
    assert "search team.svc.cluster.local svc.cluster.local cluster.local" in text


def test_registry_notifies_on_change_only() -> None:
    registry = HostRegistry()
    calls: list[int] = []

    def listener() -> None:
        calls.append(len(registry.snapshot()))

    registry.subscribe(listener)
    rec = HostRecord("ns", "a", "s", "10.0.0.2")
    registry.publish("uid-a", rec)
    registry.publish("uid-a", rec)  # same record: no news
    registry.publish("uid-b", HostRecord("ns", "b", "s", "10.0.0.3"))
    registry.withdraw("uid-a")
    registry.withdraw("uid-a")  # already gone
    registry.unsubscribe(listener)
    registry.withdraw("uid-b")
    assert calls == [1, 2, 1]
    assert registry.snapshot() == []
