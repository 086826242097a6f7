"""What answering forwards and what it answers itself (rules 1, 2, 8, 11)."""

from __future__ import annotations

import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data

CASES = [
    Case("www.example.com.", "A", id="outside-zones", kind="forward"),
    Case("local.", "A", id="parent-of-zone", kind="forward"),
    Case("cluster.local.example.", "A", id="zone-name-as-label", kind="forward"),
    Case("xcluster.local.", "A", id="zone-suffix-not-label-boundary", kind="forward"),
    Case(".", "NS", id="root", kind="forward"),
    Case("www.example.com.", "MX", id="outside-any-type", kind="forward"),
    Case("myservice.default.svc.cluster.local.", "A", id="inside-answered",
         answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("CLUSTER.LOCAL.", "SOA", id="zone-match-case-insensitive",
         answer=(data.SOA_CLUSTER.replace("cluster.local. 30", "CLUSTER.LOCAL. 30", 1),)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_forward_decision(case):
    data.check(case)


def test_forward_even_with_no_rec():
    # The edge answers SERVFAIL for a Forward when it cannot forward.
    data.check(Case("www.example.com.", "A", kind="forward"), settings=data.with_settings(no_rec=True))


def test_forward_before_first_load():
    data.check(Case("www.example.com.", "A", kind="forward"), data.store.Store())


LONGEST = [
    Case("x.sub.skydns.local.", "A", id="longest-zone-wins", rcode="NXDOMAIN", authority=(
        "sub.skydns.local. 30 IN SOA ns.dns.sub.skydns.local. hostmaster.sub.skydns.local. 42 7200 1800 86400 30",)),
    Case("nope.skydns.local.", "A", id="parent-zone-still-served", rcode="NXDOMAIN",
         authority=(data.SOA_SKYDNS,)),
]


@pytest.mark.parametrize("case", LONGEST, ids=ids(LONGEST))
def test_longest_zone(case):
    data.check(case, settings=data.with_settings(domains=("skydns.local.", "sub.skydns.local.", "cluster.local.")))
