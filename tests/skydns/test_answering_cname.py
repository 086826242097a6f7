"""CNAME chains: in-zone chase from memory, 8 links, loops, out-of-zone Resolve (rules 5, 6)."""

from __future__ import annotations

import pytest

from tests.dnscase import Case, ids
from tests.skydns import answering_data as data
from tests.skydns.answering_data import SOA_CLUSTER, SOA_SKYDNS

CHAIN8 = tuple(f"c{i}.skydns.local. 300 IN CNAME c{i + 1}.skydns.local." for i in range(1, 9))

CASES = [
    Case("alias.default.svc.cluster.local.", "A", id="in-zone-alias-chased",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",
                 "myservice.default.svc.cluster.local. 30 IN A 10.0.0.10")),
    Case("Alias.Default.svc.cluster.local.", "A", id="alias-owner-keeps-query-case",
         answer=("Alias.Default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",
                 "myservice.default.svc.cluster.local. 30 IN A 10.0.0.10")),
    # rule 13c: an alias name keeps its CNAME for every type, whatever the target has
    Case("alias.default.svc.cluster.local.", "AAAA", id="in-zone-alias-target-has-no-aaaa-cname-kept",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",)),
    Case("alias.default.svc.cluster.local.", "SRV", id="alias-srv-cname-and-target-srv",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",)),
    Case("ext.default.svc.cluster.local.", "TXT", id="externalname-txt-cname-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "TXT")),
    Case("ext.default.svc.cluster.local.", "MX", id="externalname-mx-cname-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "MX")),
    Case("ext.default.svc.cluster.local.", "SRV", id="externalname-srv-cname-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "SRV")),
    Case("ext.default.svc.cluster.local.", "A", id="externalname-out-of-zone-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "A")),
    Case("ext.default.svc.cluster.local.", "AAAA", id="externalname-aaaa-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "AAAA")),
    Case("ext.default.svc.cluster.local.", "CNAME", id="cname-query-not-chased",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",)),
    Case("alias.default.svc.cluster.local.", "CNAME", id="cname-query-in-zone",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",)),
    Case("myservice.default.svc.cluster.local.", "CNAME", id="cname-query-on-address-nodata",
         authority=(SOA_CLUSTER,)),
    Case("ext.default.svc.cluster.local.", "HINFO", id="other-type-on-alias-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "HINFO")),
    Case("alias.default.svc.cluster.local.", "CAA", id="other-type-in-zone-chain-empty-cname-kept",
         answer=("alias.default.svc.cluster.local. 30 IN CNAME myservice.default.svc.cluster.local.",)),
    Case("out1.skydns.local.", "A", id="chain-leaves-zone-halfway",
         answer=("out1.skydns.local. 300 IN CNAME out2.skydns.local.",
                 "out2.skydns.local. 300 IN CNAME www.example.org."),
         kind="resolve", resolve=("www.example.org.", "A")),
    Case("c1.skydns.local.", "A", id="chain-of-8-answered",
         answer=CHAIN8 + ("c9.skydns.local. 300 IN A 10.8.0.9",)),
    Case("d1.skydns.local.", "A", id="chain-of-9-dropped-nodata", authority=(SOA_SKYDNS,)),
    Case("d2.skydns.local.", "A", id="chain-of-8-from-second-link",
         answer=tuple(f"d{i}.skydns.local. 300 IN CNAME d{i + 1}.skydns.local." for i in range(2, 10))
         + ("d10.skydns.local. 300 IN A 10.8.1.10",)),
    Case("loop1.skydns.local.", "A", id="loop-dropped-nodata", authority=(SOA_SKYDNS,)),
    Case("self.skydns.local.", "A", id="self-alias-dropped-nodata", authority=(SOA_SKYDNS,)),
    Case("dangle.skydns.local.", "A", id="chain-ending-in-nothing-nodata", authority=(SOA_SKYDNS,)),
    Case("loop1.skydns.local.", "CNAME", id="cname-query-on-loop-still-answers",
         answer=("loop1.skydns.local. 300 IN CNAME loop2.skydns.local.",)),
    Case("self.skydns.local.", "CNAME", id="cname-query-self-nodata", authority=(SOA_SKYDNS,)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_cname(case):
    data.check(case)


def test_two_aliases_give_one_cname():
    view = data.store.Store.from_records({
        "/skydns/local/z/two/a": '{"host":"nothing.z.local."}',
        "/skydns/local/z/two/b": '{"host":"t1.z.local."}',
        "/skydns/local/z/two/c": '{"host":"t2.z.local."}',
        "/skydns/local/z/t1/x": '{"host":"10.0.0.1"}',
        "/skydns/local/z/t2/x": '{"host":"10.0.0.2"}',
    })
    data.check(Case("two.z.local.", "A", answer=("two.z.local. 300 IN CNAME t1.z.local.",
                                                  "t1.z.local. 300 IN A 10.0.0.1")),
               view, data.with_settings(domains=("z.local.",)))


KEY_ORDER_CASES = [
    # the first alias in key order, however the records were written (watch) or read (relist)
    Case("two.z.local.", "A", id="first-alias-in-key-order",
         answer=("two.z.local. 300 IN CNAME t2.z.local.", "t2.z.local. 300 IN A 10.0.0.2")),
    Case("two.z.local.", "CNAME", id="cname-query-first-alias-in-key-order",
         answer=("two.z.local. 300 IN CNAME t2.z.local.",)),
]
KEY_ORDER_RECORDS = [("/skydns/local/z/two/b", '{"host":"t1.z.local."}'),
                     ("/skydns/local/z/two/a", '{"host":"t2.z.local."}'),
                     ("/skydns/local/z/t1/x", '{"host":"10.0.0.1"}'),
                     ("/skydns/local/z/t2/x", '{"host":"10.0.0.2"}')]


@pytest.mark.parametrize("how", ["watch-puts", "relist"])
@pytest.mark.parametrize("case", KEY_ORDER_CASES, ids=ids(KEY_ORDER_CASES))
def test_alias_choice_does_not_depend_on_write_order(case, how):
    view = data.store.Store()
    if how == "relist":
        view.replace(sorted((k, v.encode()) for k, v in KEY_ORDER_RECORDS), 9)
    else:
        view.replace([], 1)
        for revision, (key, value) in enumerate(KEY_ORDER_RECORDS, 2):
            view.put(key, value.encode(), revision)
    data.check(case, view, data.with_settings(domains=("z.local.",)))


def test_chain_across_zones_and_to_apex():
    view = data.store.Store.from_records({
        "/skydns/local/a/x/r": '{"host":"b.local."}',
        "/skydns/local/b/dns/apex/r": '{"host":"10.0.0.9","ttl":7}',
    })
    data.check(Case("x.a.local.", "A", answer=("x.a.local. 300 IN CNAME b.local.", "b.local. 7 IN A 10.0.0.9")),
               view, data.with_settings(domains=("a.local.", "b.local.")))


def test_cname_query_on_mixed_name_gives_first_alias():
    data.check(Case("mail.skydns.local.", "CNAME", answer=("mail.skydns.local. 300 IN CNAME mx.other.example.",)))
    data.check(Case("mail.skydns.local.", "HINFO", authority=(data.SOA_SKYDNS,)))


FALLBACKS = [
    (Case("ext.default.svc.cluster.local.", "A", id="externalname-fallback-cname-kept",
          answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
          kind="resolve", resolve=("www.example.com.", "A")),
     Case("ext.default.svc.cluster.local.", "A",
          answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",))),
    (Case("out1.skydns.local.", "A", id="half-way-chain-fallback-nodata",
          answer=("out1.skydns.local. 300 IN CNAME out2.skydns.local.",
                  "out2.skydns.local. 300 IN CNAME www.example.org."),
          kind="resolve", resolve=("www.example.org.", "A")),
     Case("out1.skydns.local.", "A", authority=(SOA_SKYDNS,))),
    # SkyDNS server_test shape: one name-host record (unresolvable upstream) and one address.
    (Case("mail.skydns.local.", "A", id="addresses-kept-in-fallback",
          answer=("mail.skydns.local. 300 IN A 10.2.0.1", "mail.skydns.local. 300 IN A 10.2.0.3",
                  "mail.skydns.local. 300 IN CNAME mx.other.example."),
          kind="resolve", resolve=("mx.other.example.", "A")),
     Case("mail.skydns.local.", "A",
          answer=("mail.skydns.local. 300 IN A 10.2.0.1", "mail.skydns.local. 300 IN A 10.2.0.3"))),
]


@pytest.mark.parametrize(("case", "fallback"), FALLBACKS, ids=[c.ident for c, _ in FALLBACKS])
def test_resolve_fallback(case, fallback):
    data.check(case, fallback=fallback)


def test_fallback_uses_another_in_zone_alias():
    view = data.store.Store.from_records({
        "/skydns/local/z/two/a": '{"host":"far.example."}',
        "/skydns/local/z/two/b": '{"host":"t1.z.local."}',
        "/skydns/local/z/t1/x": '{"host":"10.0.0.1"}',
    })
    data.check(Case("two.z.local.", "A", answer=("two.z.local. 300 IN CNAME far.example.",),
                    kind="resolve", resolve=("far.example.", "A")),
               view, data.with_settings(domains=("z.local.",)),
               fallback=Case("two.z.local.", "A", answer=("two.z.local. 300 IN CNAME t1.z.local.",
                                                          "t1.z.local. 300 IN A 10.0.0.1")))
