"""A real skydns (real etcd) against upstreams that lie or do not answer (issues 11 and 10.6).

1. A lying upstream: an in-zone CNAME out of the zone is resolved through it, and the answer
   keeps only the chased chain: none of the extra records the upstream adds (other names,
   names in our own zone, other types) reaches the authoritative answer.
2. An unreachable upstream: once it is marked down, queries (a getent-like sequence of names
   and types through a pod's search list) are answered SERVFAIL at once instead of waiting a
   forward timeout each; repeated failures are answered from memory; when the upstream
   answers again the health checks bring it back and forwarding resumes.
"""

from __future__ import annotations

import json
import time

import dns.rcode
import pytest

from tests import procs, skydnsproc, upstreams

pytestmark = pytest.mark.integration

ZONE = "cluster.local."


def lines(reply) -> list[str]:
    return sorted(line for section in (reply.answer, reply.authority, reply.additional)
                  for rrset in section for line in rrset.to_text().splitlines())


def test_a_lying_upstream_adds_nothing_to_our_answers(etcd):
    etcd.ctl("put", "/skydns/local/cluster/svc/default/extcname/x", json.dumps({"host": "target.spoof.test."}))
    etcd.ctl("put", "/skydns/local/cluster/svc/default/web/x", json.dumps({"host": "10.0.0.1"}))
    liar = upstreams.Upstream("liar")
    with upstreams.Thread(liar):
        sky = skydnsproc.Skydns(etcd.url, domain=ZONE, nameservers=f"127.0.0.1:{liar.port}", timeout=3)
        try:
            sky.wait_ready(timeout=15)
            for proto in ("udp", "tcp"):
                reply = sky.query("extcname.default.svc.cluster.local.", "A", proto=proto)
                assert reply.rcode() == dns.rcode.NOERROR
                assert lines(reply) == [
                    "extcname.default.svc.cluster.local. 300 IN CNAME target.spoof.test.",
                    "target.spoof.test. 300 IN A 192.0.2.1",
                ], proto
                web = sky.query("web.default.svc.cluster.local.", "A", proto=proto)
                assert [rr.to_text() for rrset in web.answer for rr in rrset] == ["10.0.0.1"]
            # forwarded names too: records of our zone never come back through an upstream
            fwd = sky.query("target.spoof.test.", "A")
            assert "target.spoof.test. 300 IN A 192.0.2.1" in lines(fwd)
            assert not [line for line in lines(fwd) if "cluster.local." in line]
        finally:
            sky.stop()


def timed(sky: skydnsproc.Skydns, name: str, rdtype: str) -> tuple[int, float]:
    started = time.monotonic()
    reply = sky.query(name, rdtype)
    return reply.rcode(), time.monotonic() - started


def test_an_unreachable_upstream_costs_no_wait_once_it_is_down(etcd):
    etcd.ctl("put", "/skydns/local/cluster/svc/default/web/x", json.dumps({"host": "10.0.0.1"}))
    dead = upstreams.Upstream("timeout")
    with upstreams.Thread(dead) as thread:
        sky = skydnsproc.Skydns(etcd.url, "--forward-timeout=2", "--forward-health-interval=0.2",
                                "--loop-check-interval=0", domain=ZONE, nameservers=f"127.0.0.1:{dead.port}",
                                timeout=10)
        try:
            sky.wait_ready(timeout=15)
            # two distinct failures (--forward-max-fails 2) mark the only upstream down
            for name in ("first.example.org.", "second.example.org."):
                assert timed(sky, name, "A")[0] == dns.rcode.SERVFAIL
            procs.wait_until(lambda: sky.metric("skydns_forward_upstream_healthy",
                                                to=f"127.0.0.1:{dead.port}") == 0, what="upstream marked down")
            # getent hosts example.org with search svc.cluster.local cluster.local, ndots:5
            steps = [(n, t) for n in ("example.org.default.svc.cluster.local.", "example.org.svc.cluster.local.",
                                      "example.org.cluster.local.", "example.org.", "web.default.svc.cluster.local.",
                                      "other.example.net.")
                     for t in ("A", "AAAA")]
            results = [(name, rdtype, *timed(sky, name, rdtype)) for name, rdtype in steps]
            for name, rdtype, rcode, seconds in results:
                assert seconds < 1.0, f"{name} {rdtype} waited {seconds:.2f}s"  # forward timeout is 2 s
            rcodes = {(n, t): dns.rcode.to_text(r) for n, t, r, _ in results}
            assert rcodes[("example.org.", "A")] == "SERVFAIL"
            assert rcodes[("web.default.svc.cluster.local.", "A")] == "NOERROR"
            assert rcodes[("example.org.cluster.local.", "A")] == "NXDOMAIN"
            # the upstream comes back: the health checks notice, forwarding resumes at once
            thread.set_mode(dead, "ok")
            procs.wait_until(lambda: sky.query("example.org.", "A").rcode() == dns.rcode.NOERROR,
                             timeout=10, what="forwarding resumed")
        finally:
            sky.stop()
