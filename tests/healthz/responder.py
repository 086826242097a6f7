"""Tiny real DNS servers for healthz tests: a scripted responder and a counting UDP proxy.

Both bind 127.0.0.1 on a free port, run in daemon threads, count the queries they see,
and are stopped by close() (use them as context managers).
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests import procs


class Responder:
    """Answers from `records` {(qname, qtype): [rdata text]} over UDP and TCP.

    mode: "answer" (NXDOMAIN for unknown names), "silent" (never replies), "servfail",
    "truncate" (UDP replies are empty with TC set; TCP answers in full).
    """

    def __init__(self, records: dict[tuple[str, str], list[str]] | None = None, mode: str = "answer",
                 port: int | None = None) -> None:
        self.records = dict(records or {})
        self.mode = mode
        self.port = port or procs.free_port()
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", self.port))
        self._tcp.listen(16)
        self._udp.settimeout(0.1)
        self._tcp.settimeout(0.1)
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    @property
    def queries(self) -> int:
        return self.udp_queries + self.tcp_queries

    def reply(self, wire: bytes, tcp: bool) -> bytes | None:
        query = dns.message.from_wire(wire)
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        question = query.question[0]
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if self.mode == "truncate" and not tcp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        name = question.name.to_text().lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        known = {qname for qname, _ in self.records}
        if name not in known:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif (name, qtype) in self.records:
            response.answer.append(dns.rrset.from_text_list(name, 30, "IN", qtype, self.records[(name, qtype)]))
        return response.to_wire()

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                wire, addr = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.udp_queries += 1
            try:
                out = self.reply(wire, tcp=False)
            except Exception:  # noqa: BLE001 - a test server ignores garbage
                continue
            if out is not None:
                self._udp.sendto(out, addr)

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2)
                    size = struct.unpack("!H", _recv_exact(conn, 2))[0]
                    wire = _recv_exact(conn, size)
                    with self._lock:
                        self.tcp_queries += 1
                    out = self.reply(wire, tcp=True)
                    if out is not None:
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except (OSError, ValueError):
                    continue

    def close(self) -> None:
        self._closed = True
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> "Responder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("short read")
        data += chunk
    return data


class CountingProxy:
    """A UDP relay to upstream_port on 127.0.0.1 that counts the queries passing through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = procs.free_port()
        self.queries = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.settimeout(0.1)
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                wire, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.queries += 1
            threading.Thread(target=self._relay, args=(wire, addr), daemon=True).start()

    def _relay(self, wire: bytes, addr: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(3)
            try:
                up.sendto(wire, ("127.0.0.1", self.upstream_port))
                reply, _ = up.recvfrom(65535)
                self._sock.sendto(reply, addr)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self) -> "CountingProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
