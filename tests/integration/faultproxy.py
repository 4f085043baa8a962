"""A TCP proxy in front of an HTTP server that breaks chosen uploads half way, as a flaky network
or a failing object store would: the client has sent half the body when both connections are
reset, and the server is left with a truncated request.

It speaks just enough HTTP/1.1 for MLflow's client: one request per connection (it adds
``Connection: close``), bodies framed by ``Content-Length`` (how ``requests`` sends a file).
Every request is logged as ``(method, path, outcome)``; ``rule(method, path)`` says whether a
request is broken (``"break"``) or passed through (anything else).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .harness import LOOPBACK, free_port

Rule = Callable[[str, str], str]


def _recv_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """(request head up to and including the blank line, body bytes already read)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("client closed before sending a request head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _close_header(head: bytes) -> bytes:
    lines = [ln for ln in head.rstrip(b"\r\n").split(b"\r\n")
             if ln.partition(b":")[0].strip().lower() != b"connection"]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees a reset, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


@dataclass
class FaultProxy:
    """Listens on 127.0.0.1:<free port>, forwards to ``upstream_port``; see the module doc."""

    upstream_port: int
    rule: Rule
    port: int = field(default_factory=free_port)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server = socket.create_server((LOOPBACK, self.port))
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, body = _recv_head(client)
            method, path = head.split(b" ", 2)[:2]
            method, path = method.decode(), path.decode()
            length = _content_length(head)
            upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            if self.rule(method, path) == "break":
                while len(body) < length // 2:  # the client gets half its upload out
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                upstream.sendall(head + body[: length // 2])
                self._record(method, path, f"broken after {length // 2} of {length} bytes")
                _reset(upstream)
                _reset(client)
                return
            upstream.sendall(_close_header(head) + body)
            sent = len(body)
            while sent < length:
                chunk = client.recv(min(65536, length - sent))
                if not chunk:
                    break
                upstream.sendall(chunk)
                sent += len(chunk)
            status = b""
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                status = status or chunk.split(b"\r\n", 1)[0]
                client.sendall(chunk)
            self._record(method, path, status.decode(errors="replace"))
        except OSError as exc:
            self._record("?", "?", f"proxy error: {exc}")
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
