"""NXDOMAIN versus NODATA, with the zone's SOA in authority (rule 4)."""

from __future__ import annotations

import dns.rcode
import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data
from tests.skydns.answering_data import SOA_CLUSTER, SOA_SKYDNS

CASES = [
    Case("nope.default.svc.cluster.local.", "A", id="unknown-service-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_CLUSTER,)),
    Case("myservice2.default.svc.cluster.local.", "A", id="prefix-is-not-a-match-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("myservic.default.svc.cluster.local.", "A", id="shorter-prefix-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("x.nope.skydns.local.", "AAAA", id="second-zone-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_SKYDNS,)),
    Case("myservice.default.svc.cluster.local.", "TXT", id="existing-name-other-type-nodata",
         authority=(SOA_CLUSTER,)),
    Case("dns.cluster.local.", "TXT", id="empty-non-terminal-nodata", authority=(SOA_CLUSTER,)),
    Case("_tcp.myservice.default.svc.cluster.local.", "SRV", id="hidden-only-subtree-nodata",
         authority=(SOA_CLUSTER,)),
    Case("myservice.default.svc.cluster.local.", "SOA", id="soa-below-apex-nodata",
         authority=(SOA_CLUSTER,)),
    Case("myservice.default.svc.cluster.local.", "NS", id="ns-below-apex-nodata",
         authority=(SOA_CLUSTER,)),
    Case("nope.cluster.local.", "SOA", id="soa-unknown-name-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_CLUSTER,)),
    Case("myservice.default.svc.cluster.local.", "HINFO", id="unknown-type-nodata",
         authority=(SOA_CLUSTER,)),
    Case("NOPE.Default.svc.cluster.local.", "A", id="mixed-case-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_CLUSTER,)),
    Case("nope.cluster.local.", "A", id="nxdomain-no-ra-with-no-rec", rcode="NXDOMAIN", flags="aa",
         authority=(SOA_CLUSTER,)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_negative(case):
    settings = data.with_settings(no_rec=True) if "no-ra" in case.id else data.SETTINGS
    data.check(case, settings=settings)


def test_negative_ttl_setting():
    soa = ("cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
           f"{data.REVISION} 7200 1800 86400 5")
    data.check(Case("nope.cluster.local.", "A", rcode="NXDOMAIN", authority=(soa,)),
               settings=data.with_settings(negative_ttl=5))


def test_store_not_loaded_is_servfail():
    view = data.store.Store()
    result = data.run(Case("myservice.default.svc.cluster.local.", "A"), view)
    assert result.message.rcode() == dns.rcode.SERVFAIL
    assert result.cacheable is False


EMPTY_SOA = "empty.local. 30 IN SOA ns.dns.empty.local. hostmaster.empty.local. 1 7200 1800 86400 30"
EMPTY = [
    Case("empty.local.", "A", id="empty-zone-apex-nodata", authority=(EMPTY_SOA,)),
    Case("empty.local.", "SOA", id="empty-zone-soa", answer=(EMPTY_SOA,)),
    Case("empty.local.", "NS", id="empty-zone-ns", answer=("empty.local. 300 IN NS ns.dns.empty.local.",)),
    Case("x.empty.local.", "A", id="empty-zone-name-nxdomain", rcode="NXDOMAIN", authority=(EMPTY_SOA,)),
]


@pytest.mark.parametrize("case", EMPTY, ids=ids(EMPTY))
def test_empty_zone(case):
    view = data.store.Store.from_records({})
    data.check(case, view, data.with_settings(domains=("empty.local.",)))
