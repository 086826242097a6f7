"""Wildcards (* and any match one label, anywhere) and SkyDNS groups (store rules 3, 5)."""

from __future__ import annotations

import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data

CASES = [
    Case("svc1.*.skydns.local.", "A", id="star-in-the-middle",
         answer=("svc1.*.skydns.local. 300 IN A 10.5.1.1", "svc1.*.skydns.local. 300 IN A 10.5.2.1")),
    Case("svc1.any.skydns.local.", "A", id="any-in-the-middle",
         answer=("svc1.any.skydns.local. 300 IN A 10.5.1.1", "svc1.any.skydns.local. 300 IN A 10.5.2.1")),
    Case("*.region1.skydns.local.", "A", id="star-first-label",
         answer=("*.region1.skydns.local. 300 IN A 10.5.1.1", "*.region1.skydns.local. 300 IN A 10.5.1.2")),
    Case("a.*.region1.skydns.local.", "A", id="wildcard-then-leaf",
         answer=("a.*.region1.skydns.local. 300 IN A 10.5.1.1", "a.*.region1.skydns.local. 300 IN A 10.5.1.2")),
    Case("*.*.region1.skydns.local.", "SRV", id="two-wildcards-srv-targets-from-keys",
         answer=("*.*.region1.skydns.local. 300 IN SRV 10 50 0 a.svc1.region1.skydns.local.",
                 "*.*.region1.skydns.local. 300 IN SRV 10 50 0 a.svc2.region1.skydns.local."),
         additional=("a.svc1.region1.skydns.local. 300 IN A 10.5.1.1",
                     "a.svc2.region1.skydns.local. 300 IN A 10.5.1.2")),
    Case("svc9.*.skydns.local.", "A", id="wildcard-no-match-nxdomain", rcode="NXDOMAIN",
         authority=(data.SOA_SKYDNS,)),
    Case("*.myservice.default.svc.cluster.local.", "A", id="wildcard-does-not-match-hidden",
         answer=("*.myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("*.*.*.myservice.default.svc.cluster.local.", "SRV", id="wildcard-never-matches-underscore",
         rcode="NXDOMAIN", authority=(data.SOA_CLUSTER,)),
    Case("dom.skydns.local.", "A", id="group-of-shallowest-filters",
         answer=("dom.skydns.local. 300 IN A 10.4.0.1", "dom.skydns.local. 300 IN A 10.4.0.3",
                 "dom.skydns.local. 300 IN A 10.4.0.4")),
    Case("sub.dom.skydns.local.", "A", id="group-disagreement-ignored",
         answer=("sub.dom.skydns.local. 300 IN A 10.4.0.2", "sub.dom.skydns.local. 300 IN A 10.4.0.3",
                 "sub.dom.skydns.local. 300 IN A 10.4.0.4")),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_wildcard_and_group(case):
    data.check(case)
