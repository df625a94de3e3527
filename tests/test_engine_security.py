"""The Ray cluster `--engine ray` starts by itself (no --address) is reachable from this machine only.

Ray's job API and gRPC servers have no authentication of their own: a throwaway cluster listening on every
interface would run any code for anyone on the network. Each Ray process's listening TCP sockets are read from
/proc (the process tree of this test, matched to /proc/net/tcp and tcp6 by socket inode).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the engine tests need Ray: pip install 'geopin[cluster]'")
from ray import cloudpickle  # noqa: E402

from geopin.scale.engine import (  # noqa: E402
    EngineConfig,
    map_partitions,
    partition,
    ray_shutdown,
    start_ray,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

if not Path("/proc/net/tcp").exists():
    pytest.skip("reads listening sockets from /proc (Linux)", allow_module_level=True)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening() -> list[tuple[str, int, int]]:
    """(address, port, inode) of every listening TCP socket on this machine, IPv4 and IPv6."""
    found = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = b"".join(struct.pack("<I", int(hex_addr[i:i + 8], 16)) for i in range(0, len(hex_addr), 8))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16), int(fields[9])))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to IPv4 loopback
    return ip.is_loopback


def _ray_listeners() -> list[tuple[str, int, str]]:
    """(address, port, process name) of the sockets that this process's children listen on."""
    owner = {}
    for pid in _descendants(os.getpid()):
        if pid == os.getpid():
            continue  # this test's own process (pytest, other fixtures) is not the cluster
        for inode in _socket_inodes(pid):
            owner[inode] = pid
    listeners = []
    for address, port, inode in _listening():
        if inode in owner:
            try:
                name = Path(f"/proc/{owner[inode]}/cmdline").read_bytes().split(b"\0")[0].decode()[-60:]
            except OSError:
                name = "?"
            listeners.append((address, port, name))
    return listeners


def _square(items: list[int]) -> list[dict]:
    return [{"item": x, "square": x * x} for x in items]


def test_the_throwaway_cluster_listens_on_loopback_only(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    assert start_ray(EngineConfig("ray", workers=2))
    try:
        # workers and their gRPC servers exist once they have run something
        report = map_partitions(_square, partition(list(range(8)), 2), tmp_path / "parts",
                                EngineConfig("ray", workers=2))
        assert len(report.computed) == 4
        listeners = _ray_listeners()
        node_address = ray.util.get_node_ip_address()
    finally:
        ray_shutdown()
    # the GCS, the raylet (node manager, object manager), the agents and each worker: never none
    assert len(listeners) >= 4, listeners
    open_to_network = [entry for entry in listeners if not _is_loopback(entry[0])]
    assert not open_to_network, f"listening beyond loopback: {open_to_network}"
    assert node_address == "127.0.0.1"
    # a later join of a real cluster from this process must advertise the machine's own address again
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_the_test_suites_cluster_listens_on_loopback_only(cluster, tmp_path):
    """tests/conftest.py's `cluster` fixture (used by the other engine tests) is held to the same rule."""
    map_partitions(_square, partition(list(range(8)), 2), tmp_path / "parts", EngineConfig("ray", workers=2))
    listeners = _ray_listeners()
    assert len(listeners) >= 4, listeners
    assert not [entry for entry in listeners if not _is_loopback(entry[0])], listeners
