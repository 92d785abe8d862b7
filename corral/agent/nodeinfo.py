"""What the agent reports about its node: host, OS, kernel, addresses (stdlib only)."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import platform
import socket
import struct
from pathlib import Path

import corral
from corral.protocol import NodeInfo

logger = logging.getLogger(__name__)

_SIOCGIFADDR = 0x8915


def parse_os_release(text: str) -> dict[str, str]:
    """Parse /etc/os-release text into a dict (quotes removed)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def parse_if_inet6(text: str) -> list[str]:
    """Non-loopback IPv6 addresses from /proc/net/if_inet6 text."""
    found: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or len(parts[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
        except ValueError:
            continue
        if not addr.is_loopback:
            found.append(str(addr))
    return found


def _ipv4_addresses() -> list[str]:
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            request = struct.pack("256s", name.encode("utf-8")[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # interface without an IPv4 address
            addr = ipaddress.IPv4Address(reply[20:24])
            if not addr.is_loopback and str(addr) not in found:
                found.append(str(addr))
    return found


def ip_addresses() -> list[str]:
    """Non-loopback IPv4 then IPv6 addresses of this node; empty if they cannot be read."""
    addresses = _ipv4_addresses()
    try:
        addresses += parse_if_inet6(Path("/proc/net/if_inet6").read_text("ascii"))
    except OSError:
        logger.debug("no /proc/net/if_inet6; reporting IPv4 addresses only")
    return addresses


def collect_node_info() -> NodeInfo:
    """Describe this node for the server."""
    try:
        release = parse_os_release(Path("/etc/os-release").read_text("utf-8"))
    except OSError:
        release = {}
    uname = os.uname()
    return NodeInfo(
        hostname=socket.gethostname(),
        platform_type="Linux" if platform.system() == "Linux" else platform.system(),
        platform_name=release.get("ID", "unknown"),
        platform_version=release.get("VERSION_ID", ""),
        kernel=uname.release,
        arch=uname.machine,
        ip_addresses=ip_addresses(),
        agent_version=corral.__version__,
    )
