"""The forwarded-answer cache of a real skydns (real etcd) is independent of the store (issue 9.3).

1. Writes to unrelated keys never send a cached forwarded name upstream again.
2. A reverse name that becomes local (a PTR record appears) is answered from the store on the
   next query after the change, although its forwarded answer was cached for 300 s; when the
   record goes, the name is forwarded again.
"""

from __future__ import annotations

import json

import pytest

from tests import procs, skydnsproc, upstreams

pytestmark = pytest.mark.integration

REVERSE = "77.0.0.10.in-addr.arpa."


def ptr(reply) -> list[str]:
    return [rr.to_text() for rrset in reply.answer for rr in rrset if rrset.rdtype == 12]


def test_forwarded_answers_survive_store_changes_and_reverse_names_turn_local(etcd):
    etcd.ctl("put", "/skydns/local/cluster/svc/default/web/x", json.dumps({"host": "10.0.0.1"}))
    up = upstreams.Upstream()
    with upstreams.Thread(up):
        sky = skydnsproc.Skydns(etcd.url, "--loop-check-interval=0", domain="cluster.local.",
                                nameservers=f"127.0.0.1:{up.port}", timeout=3)
        try:
            sky.wait_ready(timeout=15)
            for _ in range(3):
                assert skydnsproc.addrs(sky.udp("www.example.org.")) == ["192.0.2.1"]
                assert ptr(sky.udp(REVERSE, "PTR")) == ["upstream.example."]
            for i in range(20):  # churn elsewhere in the store
                etcd.ctl("put", f"/skydns/local/cluster/svc/default/churn{i}/x", json.dumps({"host": f"10.0.1.{i}"}))
            procs.wait_until(lambda: skydnsproc.addrs(sky.udp("churn19.default.svc.cluster.local.")) == ["10.0.1.19"],
                             what="churn applied")
            for _ in range(3):
                assert skydnsproc.addrs(sky.udp("www.example.org.")) == ["192.0.2.1"]
            assert up.names("A") == ["www.example.org."]  # asked once, whatever the store did

            etcd.ctl("put", "/skydns/arpa/in-addr/10/0/0/77/x",
                     json.dumps({"host": "web.default.svc.cluster.local."}))
            procs.wait_until(lambda: ptr(sky.udp(REVERSE, "PTR")) == ["web.default.svc.cluster.local."],
                             what="the reverse name answered from the store")
            for proto in ("udp", "tcp", "udp"):
                assert ptr(sky.query(REVERSE, "PTR", proto=proto)) == ["web.default.svc.cluster.local."]
            etcd.ctl("del", "/skydns/arpa/in-addr/10/0/0/77/x")
            procs.wait_until(lambda: ptr(sky.udp(REVERSE, "PTR")) == ["upstream.example."],
                             what="the reverse name forwarded again")
        finally:
            sky.stop()
