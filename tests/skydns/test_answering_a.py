"""A and AAAA answers (answering rules 4, 5, 9, 10, 12)."""

from __future__ import annotations

import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data
from tests.skydns.answering_data import SOA_CLUSTER, SOA_SKYDNS

CASES = [
    Case("myservice.default.svc.cluster.local.", "A", id="clusterip",
         answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("myservice.default.cluster.local.", "A", id="legacy-name",
         answer=("myservice.default.cluster.local. 30 IN A 10.0.0.10",)),
    Case("5f106532.myservice.default.svc.cluster.local.", "A", id="leaf-name",
         answer=("5f106532.myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("myservice.default.svc.cluster.local.", "AAAA", id="clusterip-other-family-nodata",
         authority=(SOA_CLUSTER,)),
    Case("db.default.svc.cluster.local.", "A", id="headless-all-endpoints",
         answer=("db.default.svc.cluster.local. 30 IN A 10.1.0.1",
                 "db.default.svc.cluster.local. 30 IN A 10.1.0.2",
                 "db.default.svc.cluster.local. 30 IN A 10.1.0.3")),
    Case("db-0.db.default.svc.cluster.local.", "A", id="headless-endpoint-by-hostname",
         answer=("db-0.db.default.svc.cluster.local. 30 IN A 10.1.0.1",)),
    Case("10-1-0-3.db.default.svc.cluster.local.", "A", id="headless-endpoint-by-dashed-ip",
         answer=("10-1-0-3.db.default.svc.cluster.local. 30 IN A 10.1.0.3",)),
    Case("v6.default.svc.cluster.local.", "AAAA", id="aaaa",
         answer=("v6.default.svc.cluster.local. 30 IN AAAA fd00::10",)),
    Case("v6.default.svc.cluster.local.", "A", id="aaaa-only-a-nodata", authority=(SOA_CLUSTER,)),
    Case("mixed.skydns.local.", "A", id="one-ttl-per-rrset-min",
         answer=("mixed.skydns.local. 50 IN A 10.9.0.1", "mixed.skydns.local. 50 IN A 10.9.0.2")),
    Case("mixed.skydns.local.", "AAAA", id="default-ttl",
         answer=("mixed.skydns.local. 300 IN AAAA fd00::9",)),
    Case("dup.skydns.local.", "A", id="identical-records-once",
         answer=("dup.skydns.local. 40 IN A 10.7.0.1",)),
    Case("MyService.Default.SVC.Cluster.Local.", "A", id="query-case-kept",
         answer=("MyService.Default.SVC.Cluster.Local. 30 IN A 10.0.0.10",)),
    # SkyDNS directory semantics: every record below, including ExternalName aliases.
    # Kubernetes names win (rule 13a): a namespace, svc, pod and the apex hold no addresses
    Case("default.svc.cluster.local.", "AAAA", id="namespace-name-nodata", authority=(SOA_CLUSTER,)),
    Case("default.svc.cluster.local.", "A", id="namespace-name-no-subtree-nodata", authority=(SOA_CLUSTER,)),
    Case("svc.cluster.local.", "A", id="svc-name-nodata", authority=(SOA_CLUSTER,)),
    Case("pod.cluster.local.", "A", id="pod-name-nodata", authority=(SOA_CLUSTER,)),
    Case("default.cluster.local.", "A", id="legacy-namespace-name-nodata", authority=(SOA_CLUSTER,)),
    Case("nons.svc.cluster.local.", "A", id="unknown-namespace-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_CLUSTER,)),
    # rule 13b: an SRV name never answers with a CNAME: the addresses of its targets
    Case("_http._tcp.myservice.default.svc.cluster.local.", "A", id="srv-leaf-asked-directly",
         answer=("_http._tcp.myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("_pg._tcp.db.default.svc.cluster.local.", "A", id="headless-srv-name-all-target-addresses",
         answer=("_pg._tcp.db.default.svc.cluster.local. 30 IN A 10.1.0.1",
                 "_pg._tcp.db.default.svc.cluster.local. 30 IN A 10.1.0.2",
                 "_pg._tcp.db.default.svc.cluster.local. 30 IN A 10.1.0.3")),
    Case("_pg._tcp.db.default.svc.cluster.local.", "AAAA", id="srv-name-no-family-nodata",
         authority=(SOA_CLUSTER,)),
    Case("_tcp.myservice.default.svc.cluster.local.", "A", id="hidden-below-name-nodata",
         authority=(SOA_CLUSTER,)),
    Case("nohost.skydns.local.", "A", id="record-without-host-nodata", authority=(SOA_SKYDNS,)),
    # Apex: apex.dns.<zone> when it has records, else the zone's subtree.
    Case("cluster.local.", "A", id="apex-a-from-apex-dns",
         answer=("cluster.local. 60 IN A 10.0.0.53",)),
    Case("cluster.local.", "AAAA", id="apex-aaaa-apex-dns-has-only-a-nodata",
         authority=(SOA_CLUSTER,)),
    Case("ns1.ns.dns.cluster.local.", "A", id="ns-server-name",
         answer=("ns1.ns.dns.cluster.local. 60 IN A 10.0.0.53",)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_a(case):
    data.check(case)


def test_apex_without_apex_dns_answers_zone_subtree():
    view = data.store.Store.from_records({
        "/skydns/local/zone/a/x": '{"host":"10.0.0.1","ttl":10}',
        "/skydns/local/zone/b/c/y": '{"host":"10.0.0.2","ttl":10}',
        "/skydns/local/zone/b/_tcp/_x/z": '{"host":"10.0.0.3","ttl":10}',
    })
    data.check(Case("zone.local.", "A", answer=("zone.local. 10 IN A 10.0.0.1",
                                                "zone.local. 10 IN A 10.0.0.2")),
               view, data.with_settings(domains=("zone.local.",)))


MAX_CASES = [
    # the first records in key order (10-1-0-3 < db-0 < db-1), as an etcd range returns them
    Case("db.default.svc.cluster.local.", "A", id="max-answers-caps-records",
         answer=("db.default.svc.cluster.local. 30 IN A 10.1.0.3",
                 "db.default.svc.cluster.local. 30 IN A 10.1.0.1")),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=ids(MAX_CASES))
def test_max_answers(case):
    data.check(case, settings=data.with_settings(max_answers=2))


POD_CASES = [
    Case("10-244-1-5.default.pod.cluster.local.", "A", id="insecure-v4",
         answer=("10-244-1-5.default.pod.cluster.local. 30 IN A 10.244.1.5",)),
    Case("10-244-1-5.default.pod.cluster.local.", "AAAA", id="insecure-v4-aaaa-nodata",
         authority=(SOA_CLUSTER,)),
    Case("fd00--5.kube-system.pod.cluster.local.", "AAAA", id="insecure-v6",
         answer=("fd00--5.kube-system.pod.cluster.local. 30 IN AAAA fd00::5",)),
    Case("10-244-1-999.default.pod.cluster.local.", "A", id="insecure-bad-ip-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("x.10-244-1-5.default.pod.cluster.local.", "A", id="insecure-too-deep-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("10-244-9-9.default.pod.cluster.local.", "A", id="stored-pod-record-wins",
         answer=("10-244-9-9.default.pod.cluster.local. 30 IN A 10.244.9.9",)),
]
POD_VIEW = data.store.Store.from_records({
    **data.RECORDS,
    "/skydns/local/cluster/pod/default/10-244-9-9/abc": data.k2s("10.244.9.9"),
}, revision=data.REVISION)


@pytest.mark.parametrize("case", POD_CASES, ids=ids(POD_CASES))
def test_pods_insecure(case):
    data.check(case, POD_VIEW, data.with_settings(pods="insecure"))


def test_pods_disabled_is_nxdomain():
    data.check(Case("10-244-1-5.default.pod.cluster.local.", "A", rcode="NXDOMAIN",
                    authority=(SOA_CLUSTER,)))
