"""PTR from /<prefix>/arpa/...; reverse names we hold nothing for are forwarded (rule 8)."""

from __future__ import annotations

import pytest

from skydns import msg
from tests.dnscase import Case, ids
from tests.skydns import answering_data as data

R10 = msg.ip_to_reverse_name("10.0.0.10")
R_DB0 = msg.ip_to_reverse_name("10.1.0.1")
R_V6 = msg.ip_to_reverse_name("fd00::10")

CASES = [
    # our own PTR records are authoritative, also outside our zones (rule 8: the stock Corefile)
    Case(R10, "PTR", id="clusterip-ptr", flags="aa ra",
         answer=(f"{R10} 30 IN PTR myservice.default.svc.cluster.local.",)),
    Case(R_DB0, "PTR", id="endpoint-ptr", flags="aa ra", answer=(f"{R_DB0} 30 IN PTR db-0.db.default.svc.cluster.local.",)),
    Case(R_V6, "PTR", id="ip6-ptr", flags="aa ra", answer=(f"{R_V6} 30 IN PTR v6.default.svc.cluster.local.",)),
    Case(R_V6.upper(), "PTR", id="ip6-ptr-query-case", flags="aa ra", answer=(f"{R_V6.upper()} 30 IN PTR v6.default.svc.cluster.local.",)),
    Case(msg.ip_to_reverse_name("10.0.0.99"), "PTR", id="unknown-address-forwarded", kind="forward"),
    Case("0.10.in-addr.arpa.", "PTR", id="partial-reverse-name-forwarded", kind="forward"),
    Case(R10, "A", id="reverse-name-other-type-forwarded", kind="forward"),
    Case(msg.ip_to_reverse_name("fd00::99"), "PTR", id="unknown-ip6-forwarded", kind="forward"),
    Case("myservice.default.svc.cluster.local.", "PTR", id="forward-name-ptr-nodata",
         authority=(data.SOA_CLUSTER,)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_ptr(case):
    data.check(case)


SOA_REV = "in-addr.arpa. 30 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. 42 7200 1800 86400 30"
ZONE_CASES = [
    Case(R10, "PTR", id="served-reverse-zone-ptr",
         answer=(f"{R10} 30 IN PTR myservice.default.svc.cluster.local.",)),
    Case(msg.ip_to_reverse_name("10.0.0.99"), "PTR", id="served-reverse-zone-nxdomain",
         rcode="NXDOMAIN", authority=(SOA_REV,)),
    Case("0.0.10.in-addr.arpa.", "PTR", id="served-reverse-zone-partial-nodata", authority=(SOA_REV,)),
]


@pytest.mark.parametrize("case", ZONE_CASES, ids=ids(ZONE_CASES))
def test_ptr_in_served_reverse_zone(case):
    data.check(case, settings=data.with_settings(domains=("cluster.local.", "in-addr.arpa.")))


def test_hand_written_ptr_leaf_at_address_key():
    view = data.store.Store.from_records({
        "/skydns/arpa/in-addr/10/0/1/125": '{"host":"reverse.skydns.local."}',
    })
    data.check(Case("125.1.0.10.in-addr.arpa.", "PTR", flags="aa ra",
                    answer=("125.1.0.10.in-addr.arpa. 300 IN PTR reverse.skydns.local.",)), view)
