"""SIGTERM under query load drops no query: skydns keeps answering through --lameduck, local and
forwarded names alike, over UDP and TCP, then exits 0."""

from __future__ import annotations

import signal
import threading
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests import procs, skydnsproc, upstreams

pytestmark = pytest.mark.integration

# The lameduck window outlasts a slow machine (stretched by the suite's scale): the load runs
# for LOAD_AFTER_503 seconds after /ready turns 503, well inside it.
LAMEDUCK = 2.0 * procs.TIMEOUT_SCALE
LOAD_AFTER_503 = 1.2


def _load(server: skydnsproc.Skydns, proto: str, name: str, until: threading.Event, results: list) -> None:
    """One client asking name over and over until told to stop; records (rcode or error)."""
    query = dns.message.make_query(name, "A")
    while not until.is_set():
        try:
            if proto == "udp":
                reply = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
            else:
                reply = dns.query.tcp(query, "127.0.0.1", port=server.port, timeout=2)
            results.append(dns.rcode.to_text(reply.rcode()))
        except (dns.exception.DNSException, OSError) as exc:
            results.append(f"error: {exc!r}")


def test_sigterm_under_load_drops_no_query(shared_etcd):
    prefix = "it-graceful"
    shared_etcd.ctl("put", skydnsproc.key(prefix), '{"host":"10.0.0.1"}')
    upstream = upstreams.Upstream("ok")
    with upstreams.Thread(upstream):
        server = skydnsproc.Skydns(shared_etcd.url, "--loop-check-interval=0", "--cache-size=0", prefix=prefix,
                                   lameduck=str(LAMEDUCK), nameservers=f"127.0.0.1:{upstream.port}")
        try:
            server.wait_ready()
            assert skydnsproc.addrs(server.udp()) == ["10.0.0.1"]
            stop_load = threading.Event()
            results: dict[tuple[str, str], list] = {}
            threads = []
            for proto in ("udp", "tcp"):
                for name in ("web.default.svc.cluster.local.", "public.example.org."):
                    bucket = results.setdefault((proto, name), [])
                    thread = threading.Thread(target=_load, args=(server, proto, name, stop_load, bucket))
                    thread.start()
                    threads.append(thread)
            procs.wait_until(lambda: all(len(r) >= 5 for r in results.values()), what="load running")
            server.proc.send_signal(signal.SIGTERM)
            procs.wait_until(lambda: server.http("/ready") == (503, "shutting down\n"), what="lameduck")
            # keep the load on during the lameduck period, as clients do until the endpoint goes
            time.sleep(LOAD_AFTER_503)
            stop_load.set()
            for thread in threads:
                thread.join(10)
            assert server.proc.wait(LAMEDUCK + 15) == 0
        finally:
            server.stop()
    assert len(upstream.queries) >= 5, "the forwarded names never reached the upstream"
    for (proto, name), bucket in results.items():
        failures = [r for r in bucket if r != "NOERROR"]
        assert bucket and not failures, f"{proto} {name}: {len(failures)} of {len(bucket)} failed: {failures[:3]}"
