"""The real ``python -m skydns`` process against a real etcd: DNS over UDP and TCP, dig, HTTP,
start-up errors and the stop path."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import dns.flags
import dns.rcode
import pytest

from tests import procs, skydnsproc

pytestmark = pytest.mark.integration

NAME = skydnsproc.NAME
addrs = skydnsproc.addrs
key = skydnsproc.key


def test_put_change_delete_over_udp_tcp_and_dig(shared_etcd):
    prefix = "it-srv-a"
    shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.1","ttl":30}')
    with skydnsproc.running(shared_etcd.url, prefix=prefix) as server:
        reply = server.udp()
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert addrs(reply) == ["10.0.0.1"]
        assert addrs(server.tcp()) == ["10.0.0.1"]
        # a new record appears as soon as the watch delivers it
        shared_etcd.ctl("put", key(prefix, "db.default.svc.cluster.local."), '{"host":"10.0.0.5"}')
        procs.wait_until(lambda: addrs(server.udp("db.default.svc.cluster.local.")) == ["10.0.0.5"],
                         what="new record served")
        # a changed record: the cached answer is dropped, the next query has the new value
        shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.2","ttl":30}')
        procs.wait_until(lambda: addrs(server.udp()) == ["10.0.0.2"], what="changed record served")
        assert addrs(server.tcp()) == ["10.0.0.2"]
        if shutil.which("dig"):
            out = subprocess.run(
                ["dig", "+short", "+tries=1", "+time=2", "-p", str(server.port), "@127.0.0.1", NAME, "A"],
                capture_output=True, text=True, timeout=10, check=True).stdout.split()
            assert out == ["10.0.0.2"]
            out = subprocess.run(
                ["dig", "+short", "+tcp", "+tries=1", "+time=2", "-p", str(server.port), "@127.0.0.1", NAME, "A"],
                capture_output=True, text=True, timeout=10, check=True).stdout.split()
            assert out == ["10.0.0.2"]
        shared_etcd.ctl("del", key(prefix))
        procs.wait_until(lambda: server.udp().rcode() == dns.rcode.NXDOMAIN, what="deleted record NXDOMAIN")
        assert server.tcp().rcode() == dns.rcode.NXDOMAIN
        assert server.stop() == 0


def test_http_endpoints_and_metrics(shared_etcd):
    prefix = "it-srv-b"
    shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.1"}')
    shared_etcd.ctl("put", key(prefix, "bad.default.svc.cluster.local."), "not json")
    with skydnsproc.running(shared_etcd.url, prefix=prefix) as server:
        server.udp()
        server.udp()
        server.tcp("nope.default.svc.cluster.local.")
        assert server.http("/health") == (200, "OK\n")
        assert server.http("/ready") == (200, "OK\n")
        assert server.http("/nope")[0] == 404
        status, body = server.http("/metrics")
        assert status == 200
        for needle in (
            'skydns_dns_requests_total{family="1",proto="udp"',
            'skydns_dns_responses_total{rcode="NXDOMAIN"',
            "skydns_dns_request_duration_seconds_bucket",
            "skydns_dns_request_size_bytes_bucket",
            "skydns_dns_response_size_bytes_bucket",
            'skydns_cache_hits_total{cache="answers"',
            'skydns_cache_misses_total{cache="answers"',
            "skydns_etcd_keys 1.0",
            "skydns_etcd_ready",
            "skydns_etcd_revision",
            "skydns_panics_total 0.0",
            'skydns_cache_size_bytes{cache="answers"',
            'skydns_cache_size_bytes{cache="forward"',
        ):
            assert needle in body, needle
        held = re.search(r'skydns_cache_size_bytes\{cache="answers"[^}]*\} ([0-9.e+]+)', body)
        assert held and float(held.group(1)) > 0  # two answers cached, counted by the budget


def test_garbage_never_stops_the_server(shared_etcd):
    prefix = "it-srv-c"
    shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.1"}')
    with skydnsproc.running(shared_etcd.url, prefix=prefix) as server:
        packets = [b"", b"\x01" * 11, b"\x12\x34\x81\x00" + b"\x00" * 8, os.urandom(300),
                   b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
                   b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 * 2]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for packet in packets:
                s.sendto(packet, ("127.0.0.1", server.port))
                assert addrs(server.udp()) == ["10.0.0.1"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            s.sendall(b"\xff\xff" + b"\x00" * 100)  # announces 65535 bytes, sends 100, hangs up
        assert addrs(server.tcp()) == ["10.0.0.1"]
        assert server.stop() == 0


def test_sigterm_lameduck_then_exit_0(shared_etcd):
    prefix = "it-srv-d"
    shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.1"}')
    server = skydnsproc.Skydns(shared_etcd.url, "--lameduck=1.5", prefix=prefix)
    try:
        server.wait_ready()
        server.proc.send_signal(signal.SIGTERM)
        procs.wait_until(lambda: server.http("/ready") == (503, "shutting down\n"), what="/ready 503 in lameduck")
        assert addrs(server.udp()) == ["10.0.0.1"]  # still answering during lameduck
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_etcd_unreachable_at_start_is_not_fatal(etcd):
    prefix = "it-srv-e"
    etcd.ctl("put", key(prefix), '{"host":"10.0.0.1"}')
    etcd.stop()
    with skydnsproc.running(etcd.url, prefix=prefix, ready=False) as server:
        assert server.http("/ready") == (503, "etcd: not loaded yet\n")
        assert server.http("/health") == (200, "OK\n")
        assert server.udp().rcode() == dns.rcode.SERVFAIL  # never a false NXDOMAIN
        etcd.start()
        server.wait_ready()
        assert addrs(server.udp()) == ["10.0.0.1"]


def test_workers_share_the_port(shared_etcd):
    prefix = "it-srv-f"
    shared_etcd.ctl("put", key(prefix), '{"host":"10.0.0.1"}')
    with skydnsproc.running(shared_etcd.url, "--workers=2", prefix=prefix) as server:
        workers = procs.wait_until(lambda: _children(server.proc.pid), what="worker process")
        for _ in range(20):
            assert addrs(server.udp()) == ["10.0.0.1"]
        assert addrs(server.tcp()) == ["10.0.0.1"]
        assert server.stop() == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}"), "worker left running"


def _children(pid: int) -> list[int]:
    """Live child processes of pid running skydns (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


def _one_line_exit(args: list[str]) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "skydns", *args], capture_output=True, text=True,
                         timeout=30, env=skydnsproc.scrubbed_env())
    return out.returncode, out.stderr


def test_bad_flag_exits_with_one_line():
    code, err = _one_line_exit(["-addr=0.0.0.0", "-machines=http://127.0.0.1:1"])
    assert code == 2
    assert err == "skydns: error: Invalid value for '--addr': '0.0.0.0' has no port; use host:port, e.g. 127.0.0.1:53\n"


def test_port_in_use_exits_with_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, err = _one_line_exit([f"-addr=127.0.0.1:{port}", "-machines=http://127.0.0.1:1",
                                    f"--http-addr=127.0.0.1:{procs.free_port()}"])
    assert code == 1
    assert err == (f"skydns: error: cannot listen on 127.0.0.1:{port}/udp: address already in use "
                   "(use -addr to pick another)\n")
