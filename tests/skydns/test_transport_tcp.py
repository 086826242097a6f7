"""transport.Server under hostile TCP clients and its socket set-up (issue 11): eviction of the
least recently active connection when full, dropped frames that are not activity, the listen
backlog, thousands of idle connections and slow writers, the UDP receive buffer."""

from __future__ import annotations

import logging
import pathlib
import shutil
import socket
import struct
import subprocess
import time

import dns.message
import dns.query
import pytest
import uvloop

from skydns import transport
from tests import procs
from tests.skydns.test_transport import Running, Upstream, View, addrs


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def query_frame(name: str = "web.cluster.local.") -> bytes:
    return frame(dns.message.make_query(name, "A").to_wire())


def ask(conn: socket.socket, name: str = "web.cluster.local.") -> dns.message.Message:
    conn.sendall(query_frame(name))
    return dns.query.receive_tcp(conn, expiration=time.time() + 5)[0]


def closed(conn: socket.socket, within: float) -> bool:
    """Whether the server closes conn within the given seconds."""
    conn.settimeout(within)
    try:
        while True:
            if conn.recv(4096) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def make(**kw) -> Running:
    return Running(View({"web.cluster.local.": ["10.0.0.1"]}), forwarder=Upstream(), **kw)


def test_full_server_closes_the_least_recently_active_connection():
    running = make(max_connections=4, idle_timeout=30)
    try:
        address = (running.host, running.port)
        conns = [socket.create_connection(address, timeout=3) for _ in range(4)]
        procs.wait_until(lambda: len(running.server.connections) == 4, timeout=5, what="4 connections")
        assert addrs(ask(conns[0])) == ["10.0.0.1"]  # conns[0] is now the most recently active
        with socket.create_connection(address, timeout=3) as fresh:
            assert addrs(ask(fresh)) == ["10.0.0.1"]
            assert closed(conns[1], 3)  # accepted second, never active: the first to go
            assert addrs(ask(conns[0])) == ["10.0.0.1"]
            assert not closed(conns[2], 0.2)
        assert running.stats.dropped.get("tcp_evicted", 0) >= 1
        for c in conns:
            c.close()
    finally:
        running.close()


@pytest.mark.parametrize("junk", [b"", b"\x12\x34\x80" + bytes(9), b"\x00" * 5],
                         ids=["zero-length", "response", "short"])
def test_dropped_frames_are_not_activity(junk):
    running = make(idle_timeout=1.5)
    try:
        with socket.create_connection((running.host, running.port), timeout=3) as conn:
            started = time.monotonic()
            gone = False
            while time.monotonic() - started < 6 and not gone:
                try:
                    conn.sendall(frame(junk))  # every 0.3 s: it would keep a slot for ever if it counted
                except (BrokenPipeError, ConnectionResetError):
                    gone = True
                    break
                gone = closed(conn, 0.3)
            assert gone, "a connection sending only dropped frames was kept open"
            assert time.monotonic() - started < 4
    finally:
        running.close()


def _backlog(port: int) -> int:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[2])  # State Recv-Q Send-Q ...: Send-Q of a listener is its backlog


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
@pytest.mark.parametrize("new_loop", [__import__("asyncio").new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_listen_backlog_is_what_we_ask(new_loop):
    somaxconn = int(pathlib.Path("/proc/sys/net/core/somaxconn").read_text())
    running = make(new_loop=new_loop)
    try:
        assert _backlog(running.port) == min(transport.TCP_BACKLOG, somaxconn)
    finally:
        running.close()


def test_thousands_of_idle_connections_and_slow_writers_leave_room_for_a_query():
    running = make(max_connections=1000, idle_timeout=30)
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        address = (running.host, running.port)
        for _ in range(1100):  # more than the cap: the oldest are evicted as new ones arrive
            idle.append(socket.create_connection(address, timeout=5))
        for _ in range(50):  # writers trickling a query one byte at a time
            s = socket.create_connection(address, timeout=5)
            s.sendall(query_frame()[:1])
            slow.append(s)
        procs.wait_until(lambda: len(running.server.connections) == 1000, timeout=10, what="server full")
        for _ in range(3):
            for s in slow:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass
            started = time.monotonic()
            reply = dns.query.tcp(dns.message.make_query("web.cluster.local.", "A"), running.host,
                                  port=running.port, timeout=5)
            assert addrs(reply) == ["10.0.0.1"]
            assert time.monotonic() - started < 2
        assert len(running.server.connections) <= 1000
    finally:
        for s in idle + slow:
            s.close()
        running.close()


def test_udp_receive_buffer_is_raised(caplog):
    rmem_max = int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
    udp, tcp = transport.bind("127.0.0.1", 0, rcvbuf=256 * 1024)
    try:
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 == min(256 * 1024, rmem_max)
    finally:
        udp.close()
        tcp.close()
    huge = rmem_max + 1024 * 1024
    with caplog.at_level(logging.WARNING, logger="skydns.transport"):
        udp, tcp = transport.bind("127.0.0.1", 0, rcvbuf=huge)
    try:
        assert udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 == rmem_max
        assert f"UDP receive buffer is {rmem_max} bytes, not the {huge} asked" in caplog.text
    finally:
        udp.close()
        tcp.close()
