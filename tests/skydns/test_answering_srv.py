"""SRV and MX answers: SkyDNS weights, targets named from keys, targetstrip, glue (rule 7)."""

from __future__ import annotations

import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data
from tests.skydns.answering_data import SOA_CLUSTER, SOA_SKYDNS

SRV_CASES = [
    # REFERENCE 3.2 worked example: the target is the service name, glue from the ClusterIP.
    Case("_http._tcp.myservice.default.svc.cluster.local.", "SRV", id="clusterip-named-port",
         answer=("_http._tcp.myservice.default.svc.cluster.local. 30 IN SRV 10 100 80 "
                 "myservice.default.svc.cluster.local.",),
         additional=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("_HTTP._Tcp.MyService.default.svc.cluster.local.", "SRV", id="query-case-kept",
         answer=("_HTTP._Tcp.MyService.default.svc.cluster.local. 30 IN SRV 10 100 80 "
                 "myservice.default.svc.cluster.local.",),
         additional=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    # Headless: one SRV per endpoint, weight floor(100*10/30) = 33, glue per endpoint name.
    Case("_pg._tcp.db.default.svc.cluster.local.", "SRV", id="headless-named-port",
         answer=tuple(f"_pg._tcp.db.default.svc.cluster.local. 30 IN SRV 10 33 5432 {ep}.db.default.svc.cluster.local."
                      for ep in data.DB),
         additional=tuple(f"{ep}.db.default.svc.cluster.local. 30 IN A {ip}" for ep, ip in data.DB.items())),
    # rule 13b: SRV at a service name: one per named port, the service as target, glue
    Case("myservice.default.svc.cluster.local.", "SRV", id="service-name-srv-per-named-port",
         answer=("myservice.default.svc.cluster.local. 30 IN SRV 10 100 80 myservice.default.svc.cluster.local.",),
         additional=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("db.default.svc.cluster.local.", "SRV", id="headless-service-name-srv-per-endpoint",
         answer=tuple(f"db.default.svc.cluster.local. 30 IN SRV 10 33 5432 {ep}.db.default.svc.cluster.local."
                      for ep in data.DB),
         additional=tuple(f"{ep}.db.default.svc.cluster.local. 30 IN A {ip}" for ep, ip in data.DB.items())),
    Case("db-0.db.default.svc.cluster.local.", "SRV", id="endpoint-name-srv-nodata", authority=(SOA_CLUSTER,)),
    Case("weights.skydns.local.", "SRV", id="weights-per-priority",
         answer=("weights.skydns.local. 300 IN SRV 10 7 80 a.weights.skydns.local.",
                 "weights.skydns.local. 300 IN SRV 10 15 80 b.weights.skydns.local.",
                 "weights.skydns.local. 300 IN SRV 10 76 80 c.weights.skydns.local.",
                 "weights.skydns.local. 300 IN SRV 20 100 80 d.weights.skydns.local."),
         additional=("a.weights.skydns.local. 300 IN A 10.6.0.1", "b.weights.skydns.local. 300 IN A 10.6.0.2",
                     "c.weights.skydns.local. 300 IN A 10.6.0.3", "d.weights.skydns.local. 300 IN A 10.6.0.4")),
    Case("strip.skydns.local.", "SRV", id="targetstrip",
         answer=("strip.skydns.local. 300 IN SRV 10 100 8080 region1.strip.skydns.local.",),
         additional=("region1.strip.skydns.local. 300 IN A 10.3.0.1",)),
    # Out-of-zone name target: no glue; priority from the record.
    Case("rails.production.east.skydns.local.", "SRV", id="name-target-out-of-zone",
         answer=("rails.production.east.skydns.local. 300 IN SRV 20 100 0 service5.example.com.",)),
    # In-zone name target reached through a CNAME-free legacy name.
    Case("_http._tcp.legacy.default.svc.cluster.local.", "SRV", id="name-target-in-zone-glue",
         answer=("_http._tcp.legacy.default.svc.cluster.local. 30 IN SRV 10 100 8080 "
                 "myservice.default.cluster.local.",),
         additional=("myservice.default.cluster.local. 30 IN A 10.0.0.10",)),
    Case("v6.default.svc.cluster.local.", "SRV", id="service-without-named-port-nodata",
         authority=(SOA_CLUSTER,)),
    Case("nohost.skydns.local.", "SRV", id="record-without-host-nodata", authority=(SOA_SKYDNS,)),
    Case("_dns._udp.myservice.default.svc.cluster.local.", "SRV", id="unknown-port-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
]


@pytest.mark.parametrize("case", SRV_CASES, ids=ids(SRV_CASES))
def test_srv(case):
    data.check(case)


MX_CASES = [
    Case("mail.skydns.local.", "MX", id="mail-records-only",
         answer=("mail.skydns.local. 300 IN MX 5 mx1.mail.skydns.local.",
                 "mail.skydns.local. 300 IN MX 10 mx.other.example."),
         additional=("mx1.mail.skydns.local. 300 IN A 10.2.0.1",)),
    Case("mail.skydns.local.", "A", id="mail-records-are-addresses-too",
         answer=("mail.skydns.local. 300 IN A 10.2.0.1", "mail.skydns.local. 300 IN A 10.2.0.3",
                 "mail.skydns.local. 300 IN CNAME mx.other.example."),
         kind="resolve", resolve=("mx.other.example.", "A")),
    Case("myservice.default.svc.cluster.local.", "MX", id="no-mail-nodata", authority=(SOA_CLUSTER,)),
]


@pytest.mark.parametrize("case", MX_CASES, ids=ids(MX_CASES))
def test_mx(case):
    data.check(case)


def test_weight_zero_and_minimum_one():
    view = data.store.Store.from_records({
        "/skydns/local/w/a": '{"host":"10.0.0.1","port":1,"weight":1}',
        "/skydns/local/w/b": '{"host":"10.0.0.2","port":1,"weight":1000}',
        "/skydns/local/w/c": '{"host":"10.0.0.3","port":1}',
    })
    data.check(Case("w.local.", "SRV",
                    answer=("w.local. 300 IN SRV 10 1 1 a.w.local.",   # floor(100/1101) = 0 -> 1
                            "w.local. 300 IN SRV 10 90 1 b.w.local.",  # floor(100000/1101)
                            "w.local. 300 IN SRV 10 9 1 c.w.local."),  # weight 0 counts 100
                    additional=("a.w.local. 300 IN A 10.0.0.1", "b.w.local. 300 IN A 10.0.0.2",
                                "c.w.local. 300 IN A 10.0.0.3")),
               view, data.with_settings(domains=("w.local.",)))


def test_glue_follows_cname_chain():
    view = data.store.Store.from_records({
        "/skydns/local/z/srv/x": '{"host":"alias.z.local.","port":53}',
        "/skydns/local/z/alias/x": '{"host":"real.z.local."}',
        "/skydns/local/z/real/x": '{"host":"10.0.0.7","ttl":9}',
    })
    data.check(Case("srv.z.local.", "SRV",
                    answer=("srv.z.local. 300 IN SRV 10 100 53 alias.z.local.",),
                    additional=("alias.z.local. 300 IN CNAME real.z.local.", "real.z.local. 9 IN A 10.0.0.7")),
               view, data.with_settings(domains=("z.local.",)))


@pytest.mark.parametrize(("strip", "target"), [(0, "x.a.t.local."), (2, "t.local."), (3, "local."),
                                               (4, "x.a.t.local."), (9, "x.a.t.local.")],
                         ids=["none", "two", "all-but-one", "every-label-keeps-name", "overshoot-keeps-name"])
def test_targetstrip_counts(strip, target):
    view = data.store.Store.from_records({
        "/skydns/local/t/a/x": f'{{"host":"10.0.0.1","port":5,"targetstrip":{strip}}}'})
    data.check(Case("a.t.local.", "SRV", answer=(f"a.t.local. 300 IN SRV 10 100 5 {target}",),
                    additional=(f"{target} 300 IN A 10.0.0.1",)),
               view, data.with_settings(domains=("t.local.",)))
