"""The pod network: a Linux bridge in the root network namespace, one network
namespace per pod joined to it by a veth pair, addresses from one CIDR.

Traffic stays on the bridge: pods reach each other (layer 2) and the host's
bridge address (where the API server, MinIO and Prometheus listen); the host
never forwards their packets anywhere else. Also holds the cluster's name
records (see kubelet_dns), since every kubelet of the harness shares this object.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import subprocess
import threading
import zlib
from pathlib import Path
from typing import TextIO

from localkube.kubelet.dns import HostRegistry

_NETNS_DIR = Path("/run/netns")
# One lock per network name, held while a harness uses that network.
_LOCK_DIR = Path("/run/kubetrain-podnet")


class NetworkError(RuntimeError):
    """An `ip` command failed."""


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip() or result.stdout}")
    return result.stdout


def _write_sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


class PodNetwork:
    """A bridge plus per-pod network namespaces; addresses are handed out here."""

    def __init__(self, name: str = "kt0", cidr: str = "10.213.0.0/16") -> None:
        if len(name) > 8:
            raise ValueError("network name must be at most 8 characters (interface names)")
        self.name = name
        self.network = ipaddress.ip_network(cidr)
        hosts = self.network.hosts()
        self.bridge_ip = str(next(hosts))
        self.prefix_len = self.network.prefixlen
        # Policy-routing table for packets arriving from the bridge; any id will do.
        self._table = str(1000 + zlib.crc32(name.encode()) % 30000)
        self.names = HostRegistry()
        self._lock = threading.Lock()
        self._allocated: dict[str, str] = {}
        self._next_offset = 2  # .1 is the bridge
        self._sequence = 0
        self._is_up = False
        self._lock_file: TextIO | None = None

    # --- bridge -----------------------------------------------------------------------

    def setup(self) -> None:
        """Create the bridge (after removing what a crashed earlier run may have left).

        Fails if another live harness on this machine uses the same network name
        or an overlapping CIDR: tearing down its namespaces would kill its pods.
        """
        self._take_lock()
        try:
            self._remove_leftovers()
            self._check_cidr_free()
            self._create_bridge()
        except BaseException:
            self._remove_leftovers()
            self._drop_lock()
            raise
        self._is_up = True

    def _take_lock(self) -> None:
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        path = _LOCK_DIR / f"{self.name}.lock"
        lock = path.open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NetworkError(
                f"pod network {self.name!r} is in use by another live harness on this machine "
                f"(lock {path}); stop it, or use another network name and CIDR"
            ) from None
        self._lock_file = lock

    def _drop_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _check_cidr_free(self) -> None:
        for line in _ip("-o", "-4", "addr", "show").splitlines():
            words = line.split()
            device, address = words[1], words[3]
            if ipaddress.ip_interface(address).network.overlaps(self.network):
                raise NetworkError(
                    f"pod CIDR {self.network} overlaps {address} on {device}: "
                    "another harness or network uses it; pick another CIDR"
                )

    def _create_bridge(self) -> None:
        _ip("link", "add", self.name, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/{self.prefix_len}", "dev", self.name)
        _ip("link", "set", self.name, "up")
        # Never route what pods send. Two locks: a policy rule that sends every packet
        # entering on the bridge to a table whose only way out is the bridge itself
        # (it holds even if someone turns on net.ipv4.ip_forward, which resets the
        # per-interface flag), and forwarding off for the bridge.
        _ip("route", "add", "prohibit", "default", "table", self._table)
        _ip("route", "add", str(self.network), "dev", self.name, "table", self._table)
        _ip("rule", "add", "iif", self.name, "lookup", self._table, "priority", self._table)
        _write_sysctl(f"net/ipv4/conf/{self.name}/forwarding", "0")

    def teardown(self) -> None:
        """Remove every pod namespace, the bridge and the routing rule (if set up here)."""
        if self._lock_file is None:
            return  # never set up by us: the bridge may belong to another harness
        self._remove_leftovers()
        with self._lock:
            self._allocated.clear()
        self._is_up = False
        self._drop_lock()

    def _remove_leftovers(self) -> None:
        for netns in self._own_namespaces():
            self._kill_namespace_processes(netns)
            _ip("netns", "delete", netns, check=False)
        _ip("rule", "del", "iif", self.name, "lookup", self._table, check=False)
        _ip("route", "flush", "table", self._table, check=False)
        if Path("/sys/class/net", self.name).exists():
            _ip("link", "delete", self.name, check=False)

    def _own_namespaces(self) -> list[str]:
        if not _NETNS_DIR.is_dir():
            return []
        prefix = f"{self.name}-"
        return sorted(p.name for p in _NETNS_DIR.iterdir() if p.name.startswith(prefix))

    # --- addresses ----------------------------------------------------------------------

    def allocate_ip(self, owner: str) -> str:
        """An address for `owner` (stable while held); released addresses are reused last."""
        with self._lock:
            if owner in self._allocated:
                return self._allocated[owner]
            used = set(self._allocated.values())
            size = self.network.num_addresses
            for _ in range(size):
                offset = self._next_offset
                self._next_offset = offset + 1 if offset + 1 < size - 1 else 2
                address = str(self.network.network_address + offset)
                if address not in used:
                    self._allocated[owner] = address
                    return address
        raise NetworkError(f"pod network {self.network} has no free address")

    def release_ip(self, owner: str) -> None:
        with self._lock:
            self._allocated.pop(owner, None)

    # --- pod namespaces -----------------------------------------------------------------

    def create_namespace(self, ip: str) -> str:
        """A new network namespace with `ip` on eth0 (wired to the bridge) and lo up."""
        if not self._is_up:
            raise NetworkError("pod network is not set up")
        with self._lock:
            self._sequence += 1
            number = self._sequence
        netns = f"{self.name}-p{number}"
        host_if = f"{self.name}v{number}"
        _ip("netns", "add", netns)
        try:
            _ip(
                "-batch",
                "-",
                stdin=(
                    f"link add {host_if} type veth peer name eth0 netns {netns}\n"
                    f"link set {host_if} master {self.name} up\n"
                ),
            )
            _ip(
                "-n",
                netns,
                "-batch",
                "-",
                stdin=(
                    "link set lo up\n"
                    f"addr add {ip}/{self.prefix_len} dev eth0\n"
                    "link set eth0 up\n"
                    f"route add default via {self.bridge_ip} dev eth0\n"
                ),
            )
        except NetworkError:
            self.delete_namespace(netns)
            raise
        return netns

    def namespace_path(self, netns: str) -> Path:
        return _NETNS_DIR / netns

    def namespace_pids(self, netns: str) -> list[int]:
        out = _ip("netns", "pids", netns, check=False)
        return [int(word) for word in out.split() if word.isdigit()]

    def _kill_namespace_processes(self, netns: str) -> None:
        for pid in self.namespace_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def delete_namespace(self, netns: str) -> None:
        """Kill whatever still runs in the namespace, then delete it (and its veth)."""
        self._kill_namespace_processes(netns)
        _ip("netns", "delete", netns, check=False)
