"""End to end through the record contract: kube2sky's records (built by kube2sky.records from
k8s objects) loaded into the store, then answered. Catches drift between writer and reader."""

from __future__ import annotations

import pytest
import yaml

from kube2sky import objects, records, settings as k2s_settings
from skydns import msg, store
from tests.dnscase import Case, ids
from tests.skydns import answering_data as data

MANIFESTS = """
kind: Service
metadata: {name: myservice, namespace: default}
spec: {clusterIP: 10.0.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.0.0.53, ports: [{name: dns, port: 53, protocol: UDP}]}
---
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
kind: EndpointSlice
metadata: {name: db-abc, namespace: default, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.1.0.1], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.1.0.2], conditions: {ready: true}}
---
kind: Service
metadata: {name: search, namespace: default}
spec: {type: ExternalName, externalName: www.example.com}
---
kind: Service
metadata: {name: alias, namespace: default}
spec: {type: ExternalName, externalName: myservice.default.svc.cluster.local}
"""


def _view() -> store.Store:
    services, slices = [], []
    for doc in yaml.safe_load_all(MANIFESTS):
        obj = objects.parse(doc["kind"], doc)
        (slices if isinstance(obj, objects.EndpointSlice) else services).append(obj)
    desired = records.desired(records.State(services, slices, []), k2s_settings.Settings())
    return store.Store.from_records(desired, revision=100)


VIEW = _view()
SETTINGS = data.with_settings(domains=("cluster.local.",))
SOA = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 100 7200 1800 86400 30"
# rule 13d: the NS target is the SOA's MNAME, not a name made from kube2sky's hash leaf
NS_NAME = "ns.dns.cluster.local."

CASES = [
    Case("myservice.default.svc.cluster.local.", "A", id="clusterip",
         answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    # the legacy name is one alias to the service name (issue 12)
    Case("myservice.default.cluster.local.", "A", id="legacy-name",
         answer=("myservice.default.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",
                 "myservice.default.svc.cluster.local. 30 IN A 10.0.0.10")),
    Case("_http._tcp.myservice.default.svc.cluster.local.", "SRV", id="clusterip-srv",
         answer=("_http._tcp.myservice.default.svc.cluster.local. 30 IN SRV 10 100 80 myservice.default.svc.cluster.local.",),
         additional=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("db.default.svc.cluster.local.", "A", id="headless",
         answer=("db.default.svc.cluster.local. 30 IN A 10.1.0.1", "db.default.svc.cluster.local. 30 IN A 10.1.0.2")),
    Case("db-0.db.default.svc.cluster.local.", "A", id="headless-hostname",
         answer=("db-0.db.default.svc.cluster.local. 30 IN A 10.1.0.1",)),
    Case("10-1-0-2.db.default.svc.cluster.local.", "A", id="headless-dashed",
         answer=("10-1-0-2.db.default.svc.cluster.local. 30 IN A 10.1.0.2",)),
    Case("_pg._tcp.db.default.svc.cluster.local.", "SRV", id="headless-srv",
         answer=("_pg._tcp.db.default.svc.cluster.local. 30 IN SRV 10 50 5432 db-0.db.default.svc.cluster.local.",
                 "_pg._tcp.db.default.svc.cluster.local. 30 IN SRV 10 50 5432 10-1-0-2.db.default.svc.cluster.local."),
         additional=("db-0.db.default.svc.cluster.local. 30 IN A 10.1.0.1",
                     "10-1-0-2.db.default.svc.cluster.local. 30 IN A 10.1.0.2")),
    Case("search.default.svc.cluster.local.", "A", id="externalname", kind="resolve", resolve=("www.example.com.", "A"),
         answer=("search.default.svc.cluster.local. 30 IN CNAME www.example.com.",)),
    Case("alias.default.svc.cluster.local.", "A", id="externalname-in-zone",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",
                 "myservice.default.svc.cluster.local. 30 IN A 10.0.0.10")),
    Case("dns-version.cluster.local.", "TXT", id="dns-version",
         answer=('dns-version.cluster.local. 30 IN TXT "1.1.0"',)),
    Case("10.0.0.10.in-addr.arpa.", "PTR", id="ptr-clusterip",
         answer=("10.0.0.10.in-addr.arpa. 30 IN PTR myservice.default.svc.cluster.local.",), flags="aa ra"),
    Case("2.0.1.10.in-addr.arpa.", "PTR", id="ptr-endpoint",
         answer=("2.0.1.10.in-addr.arpa. 30 IN PTR 10-1-0-2.db.default.svc.cluster.local.",), flags="aa ra"),
    Case("cluster.local.", "NS", id="ns", answer=(f"cluster.local. 30 IN NS {NS_NAME}",),
         additional=(f"{NS_NAME} 30 IN A 10.0.0.53",)),
    Case("ns.dns.cluster.local.", "A", id="ns-address", answer=("ns.dns.cluster.local. 30 IN A 10.0.0.53",)),
    Case("nope.default.svc.cluster.local.", "A", id="nxdomain", rcode="NXDOMAIN", authority=(SOA,)),
    Case("myservice.default.svc.cluster.local.", "AAAA", id="nodata", authority=(SOA,)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_kube2sky_records(case):
    data.check(case, VIEW, SETTINGS)
