"""Address bookkeeping of the pod network (no namespaces or bridges are created here)."""

from __future__ import annotations

import ipaddress

import pytest

from localkube.network import NetworkError, PodNetwork


def test_bridge_takes_first_address() -> None:
    net = PodNetwork("ktu0", "10.213.0.0/16")
    assert net.bridge_ip == "10.213.0.1"
    assert net.prefix_len == 16


def test_allocation_is_stable_unique_and_inside_the_cidr() -> None:
    net = PodNetwork("ktu0", "10.213.0.0/24")
    first = net.allocate_ip("pod-a")
    assert net.allocate_ip("pod-a") == first  # same owner, same address
    others = {net.allocate_ip(f"pod-{i}") for i in range(50)}
    assert first not in others
    assert len(others) == 50
    cidr = ipaddress.ip_network("10.213.0.0/24")
    for address in {first, *others}:
        ip = ipaddress.ip_address(address)
        assert ip in cidr
        assert address != net.bridge_ip
        assert ip not in (cidr.network_address, cidr.broadcast_address)


def test_released_addresses_are_reused_last() -> None:
    net = PodNetwork("ktu0", "10.213.0.0/29")  # .2 .. .6 usable for pods
    addresses = [net.allocate_ip(f"p{i}") for i in range(5)]
    assert addresses == [f"10.213.0.{i}" for i in range(2, 7)]
    with pytest.raises(NetworkError, match="no free address"):
        net.allocate_ip("one-too-many")
    net.release_ip("p1")
    assert net.allocate_ip("new") == "10.213.0.3"


def test_name_length_is_checked() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        PodNetwork("much-too-long")
