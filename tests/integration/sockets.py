"""Which TCP sockets a set of processes listens on, read from /proc (no ``ss``/``netstat``).

``/proc/net/tcp`` and ``/proc/net/tcp6`` list every socket with its inode; ``/proc/<pid>/fd``
links name the inodes a process holds. A listener is "loopback-only" when its address is in
127.0.0.0/8 or is ``::1``; ``0.0.0.0`` and ``::`` accept connections on every interface.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket and the process holding it."""

    pid: int
    process: str  # executable name, or Ray's process title (``ray::IDLE``, ``raylet``, ...)
    address: str
    port: int

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] {self.address}:{self.port}"


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four little-endian words
    text = socket.inet_ntop(socket.AF_INET6, words)
    mapped = ipaddress.ip_address(text).ipv4_mapped
    return str(mapped) if mapped else text


def _listening_inodes() -> dict[int, tuple[str, int]]:
    """Socket inode -> (local address, port) for every TCP socket in LISTEN state."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != _LISTEN:
                    continue
                addr, port = fields[1].split(":")
                out[int(fields[9])] = (_decode(addr), int(port, 16))
    return out


def process_name(pid: int) -> str:
    """A readable name: Ray's process title if it set one, else the executable's base name,
    plus the script for Python processes (``python:dashboard.py``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    argv = [a.decode(errors="replace") for a in argv if a]
    if not argv:
        return "?"
    first = argv[0].split()[0]
    if first.startswith("ray::"):
        return first
    base = os.path.basename(first)
    if base.startswith("python"):
        if "-c" in argv[1:3]:
            return "python:-c"
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        if "-m" in argv[1:3]:
            script = argv[argv.index("-m") + 1]
        return f"python:{os.path.basename(script)}"
    return base


def listening_sockets(pids: set[int]) -> list[Listener]:
    """Every TCP socket in LISTEN state held by one of ``pids``."""
    inodes = _listening_inodes()
    found = []
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        name = process_name(pid)
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    found.append(Listener(pid, name, *inodes[inode]))
    return sorted(set(found), key=lambda s: (s.process, s.port, s.address, s.pid))


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (any process)."""
    return {addr for addr, p in _listening_inodes().values() if p == port}
