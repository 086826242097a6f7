"""Apex SOA/NS, TXT, CHAOS, ANY, AXFR/IXFR, EDNS, opcodes and flags (rules 1, 3, 9)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import pytest

from skydns import answering, settings as settings_mod, store
from tests import dnscase
from tests.dnscase import Case, ids
from tests.skydns import answering_data as data
from tests.skydns.answering_data import SOA_CLUSTER, SOA_SKYDNS

SOA_ANSWER = SOA_CLUSTER
LONG = '"' + "a" * 255 + '" "' + "a" * 45 + '"'

CASES = [
    # Apex
    Case("cluster.local.", "SOA", id="apex-soa", answer=(SOA_ANSWER,)),
    Case("Cluster.Local.", "SOA", id="apex-soa-query-case",
         answer=(SOA_ANSWER.replace("cluster.local. 30", "Cluster.Local. 30", 1),)),
    Case("skydns.local.", "SOA", id="apex-soa-second-zone", answer=(SOA_SKYDNS,)),
    # rule 13d: a kube2sky zone names one server, the SOA's MNAME, glued with its addresses
    Case("cluster.local.", "NS", id="apex-ns-from-ns-dns",
         answer=("cluster.local. 60 IN NS ns.dns.cluster.local.",),
         additional=("ns.dns.cluster.local. 60 IN A 10.0.0.53",
                     "ns.dns.cluster.local. 60 IN AAAA fd00::53")),
    Case("skydns.local.", "NS", id="apex-ns-without-records",
         answer=("skydns.local. 300 IN NS ns.dns.skydns.local.",)),
    # TXT
    Case("dns-version.cluster.local.", "TXT", id="dns-version",
         answer=('dns-version.cluster.local. 28800 IN TXT "1.1.0"',)),
    Case("text.skydns.local.", "TXT", id="text", answer=('text.skydns.local. 60 IN TXT "hello world"',)),
    Case("long.skydns.local.", "TXT", id="text-split-255", answer=(f"long.skydns.local. 300 IN TXT {LONG}",)),
    Case("text.skydns.local.", "A", id="text-only-a-nodata", authority=(SOA_SKYDNS,)),
    Case("ext.default.svc.cluster.local.", "TXT", id="txt-alias-resolve",
         answer=("ext.default.svc.cluster.local. 30 IN CNAME www.example.com.",),
         kind="resolve", resolve=("www.example.com.", "TXT")),
    # CHAOS (no RA/AA dependence on zones; TTL 0)
    Case("version.bind.", "TXT", qclass="CH", id="chaos-version-bind",
         answer=('version.bind. 0 CH TXT "kube-skydns"',)),
    Case("VERSION.server.", "TXT", qclass="CH", id="chaos-version-server",
         answer=('VERSION.server. 0 CH TXT "kube-skydns"',)),
    Case("hostname.bind.", "TXT", qclass="CH", id="chaos-hostname", answer=('hostname.bind. 0 CH TXT "localhost"',)),
    Case("id.server.", "TXT", qclass="CH", id="chaos-id-server", answer=('id.server. 0 CH TXT "localhost"',)),
    Case("authors.bind.", "TXT", qclass="CH", id="chaos-other-refused", rcode="REFUSED", flags="ra"),
    Case("version.bind.", "A", qclass="CH", id="chaos-other-type-refused", rcode="REFUSED", flags="ra"),
    Case("myservice.default.svc.cluster.local.", "A", qclass="HS", id="class-hs-refused",
         rcode="REFUSED", flags="ra"),
    # ANY (RFC 8482), AXFR/IXFR
    Case("myservice.default.svc.cluster.local.", "ANY", id="any-minimal",
         answer=('myservice.default.svc.cluster.local. 300 IN HINFO "RFC8482" ""',)),
    Case("nope.cluster.local.", "ANY", id="any-nxdomain", rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("cluster.local.", "ANY", id="any-apex", answer=('cluster.local. 300 IN HINFO "RFC8482" ""',)),
    Case("www.example.com.", "ANY", id="any-outside-forwarded", kind="forward"),
    Case("cluster.local.", "AXFR", id="axfr-refused", rcode="REFUSED", flags="ra"),
    Case("cluster.local.", "IXFR", id="ixfr-refused", rcode="REFUSED", flags="ra"),
    Case("example.com.", "AXFR", id="axfr-outside-refused", rcode="REFUSED", flags="ra"),
    # EDNS: OPT only when asked, our payload
    Case("myservice.default.svc.cluster.local.", "A", edns=0, id="edns-opt-in-reply",
         answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
    Case("nope.cluster.local.", "A", edns=0, id="edns-nxdomain", rcode="NXDOMAIN", authority=(SOA_CLUSTER,)),
    Case("myservice.default.svc.cluster.local.", "A", edns=1, id="edns-version-1-badvers",
         rcode="BADVERS", flags="ra"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_misc(case):
    data.check(case)


def test_any_refused_when_not_minimal():
    data.check(Case("myservice.default.svc.cluster.local.", "ANY", rcode="REFUSED", flags="ra"),
               settings=data.with_settings(any_minimal=False))


def test_no_rec_clears_ra():
    data.check(Case("myservice.default.svc.cluster.local.", "A", flags="aa",
                    answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
               settings=data.with_settings(no_rec=True))


def test_edns_payload_setting():
    data.check(Case("myservice.default.svc.cluster.local.", "A", edns=0,
                    answer=("myservice.default.svc.cluster.local. 30 IN A 10.0.0.10",)),
               settings=data.with_settings(edns_payload=4096))


def test_version_setting_and_hostmaster():
    settings = data.with_settings(version="v9", hostmaster="admin@example.com.")
    data.check(Case("version.bind.", "TXT", qclass="CH", answer=('version.bind. 0 CH TXT "v9"',)),
               settings=settings)
    data.check(Case("cluster.local.", "SOA", answer=(
        f"cluster.local. 30 IN SOA ns.dns.cluster.local. admin.example.com. {data.REVISION} 7200 1800 86400 30",)),
               settings=settings)


def test_serial_follows_revision():
    view = data.store.Store.from_records({"x.cluster.local.": "{}"}, revision=7)
    view.put("/skydns/local/cluster/y", b'{"host":"10.0.0.1"}', 9)
    data.check(Case("cluster.local.", "SOA", answer=(
        "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 9 7200 1800 86400 30",)),
               view)


def _reply(query):
    result = answering.answer(query, data.VIEW, data.SETTINGS)
    assert isinstance(result, answering.Reply)
    return result


def test_notimp_for_other_opcodes():
    query = dns.message.make_query("cluster.local.", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    result = _reply(query)
    assert result.message.rcode() == dns.rcode.NOTIMP
    assert result.cacheable is False
    assert result.message.opcode() == dns.opcode.NOTIFY


@pytest.mark.parametrize("count", [0, 2], ids=["no-question", "two-questions"])
def test_formerr_for_question_count(count):
    query = dns.message.Message(id=77)
    for i in range(count):
        query.find_rrset(query.question, dns.name.from_text(f"q{i}.cluster.local."), 1, 1, create=True,
                         force_unique=True)
    result = _reply(query)
    assert result.message.rcode() == dns.rcode.FORMERR
    assert result.message.id == 77
    assert result.cacheable is False


def test_badvers_not_cacheable_and_id_kept():
    query = dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A", edns=1))
    result = _reply(query)
    assert result.message.rcode() == dns.rcode.BADVERS
    assert result.message.edns == 0
    assert result.message.id == query.id
    assert result.cacheable is False


def test_rd_copied_and_answers_cacheable():
    query = dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A"))
    query.flags &= ~dns.flags.RD
    result = _reply(query)
    assert not result.message.flags & dns.flags.RD
    assert result.cacheable is True
    query.flags |= dns.flags.RD
    assert _reply(query).message.flags & dns.flags.RD


def test_owner_is_the_query_name_object():
    query = dnscase.make_query(Case("MyService.default.svc.cluster.local.", "A"))
    result = _reply(query)
    assert result.message.answer[0].name is query.question[0].name


def test_internal_error_is_servfail(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(answering, "_in_zone", boom)
    result = _reply(dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A")))
    assert result.message.rcode() == dns.rcode.SERVFAIL
    assert result.cacheable is False


def test_dnscase_ttl_is_compared_unless_told():
    query = dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A"))
    reply = _reply(query).message
    with pytest.raises(AssertionError):
        dnscase.assert_reply(reply, Case("myservice.default.svc.cluster.local.", "A",
                                         answer=("myservice.default.svc.cluster.local. 31 IN A 10.0.0.10",)))
    dnscase.assert_reply(reply, Case("myservice.default.svc.cluster.local.", "A", check_ttl=False,
                                     answer=("myservice.default.svc.cluster.local. 0 IN A 10.0.0.10",)))


def test_internal_error_hands_the_exception_to_the_edge(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(answering, "_in_zone", boom)
    result = _reply(dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A")))
    assert isinstance(result.failure, RuntimeError)  # counted as a panic by the transport


# Issue 10 point 7 and rule 13: behaviour with and without kube2sky's layout, in one small store.
K8S_AND_HAND = store.Store.from_records({
    "/skydns/local/cluster/dns-version/v": '{"text":"1.1.0","ttl":30}',
    "/skydns/local/cluster/svc/ns1/web/w": '{"host":"10.0.0.20","ttl":30}',
    # hand-written zone: no dns-version, SkyDNS aggregation everywhere (CoreDNS etcd plugin)
    "/skydns/local/hand/region2": '{"host":"mainendpoint.region2.hand.local."}',
    "/skydns/local/hand/region2/mainendpoint": '{"host":"10.240.0.1"}',
    "/skydns/local/hand/a/x": '{"host":"10.1.0.1"}',
    "/skydns/local/hand/svc/ns1/web/w": '{"host":"10.1.0.2"}',
}, revision=7)
SOA_C7 = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 30"
SOA_H7 = "hand.local. 30 IN SOA ns.dns.hand.local. hostmaster.hand.local. 7 7200 1800 86400 30"
LAYOUT_CASES = [
    Case("cluster.local.", "A", id="k8s-apex-no-addresses-nodata", authority=(SOA_C7,)),
    Case("ns1.svc.cluster.local.", "A", id="k8s-namespace-nodata", authority=(SOA_C7,)),
    Case("ns1.pod.cluster.local.", "A", id="k8s-pod-namespace-of-existing-ns-nodata", authority=(SOA_C7,)),
    Case("ns2.pod.cluster.local.", "A", id="k8s-pod-namespace-unknown-nxdomain", rcode="NXDOMAIN",
         authority=(SOA_C7,)),
    Case("hand.local.", "A", id="hand-apex-aggregates-subtree",
         answer=("hand.local. 300 IN A 10.1.0.1", "hand.local. 300 IN A 10.1.0.2",
                 "hand.local. 300 IN A 10.240.0.1")),
    Case("ns1.svc.hand.local.", "A", id="hand-svc-label-is-just-a-label",
         answer=("ns1.svc.hand.local. 300 IN A 10.1.0.2",)),
    # the CoreDNS etcd plugin's exact CNAME lookup: the own key's alias, though it points below
    Case("region2.hand.local.", "CNAME", id="cname-own-key-alias-below-the-name",
         answer=("region2.hand.local. 300 IN CNAME mainendpoint.region2.hand.local.",)),
]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=ids(LAYOUT_CASES))
def test_kubernetes_layout_only_where_kube2sky_writes(case):
    data.check(case, view=K8S_AND_HAND, settings=data.with_settings(domains=("cluster.local.", "hand.local.")))


@pytest.mark.parametrize("changes, ra", [
    ({}, True),
    ({"no_rec": True}, False),
    ({"nameservers": (), "stub_domains": ()}, False),
    ({"nameservers": (), "stub_domains": (("corp.", (settings_mod.Upstream("192.0.2.1"),)),)}, True),
], ids=["upstream", "no-rec", "no-upstream", "stub-only"])
def test_ra_only_when_forwarding_is_possible(changes, ra):
    query = dnscase.make_query(Case("myservice.default.svc.cluster.local.", "A"))
    result = answering.answer(query, data.VIEW, data.with_settings(**changes))
    assert bool(result.message.flags & dns.flags.RA) is ra
