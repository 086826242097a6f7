"""Shared data for the answering tables: kube2sky-shaped and hand-written SkyDNS records.

Zones: ``cluster.local.`` (what kube2sky writes, REFERENCE 3.2 and DESIGN 3) and
``skydns.local.`` (hand-written SkyDNS records: mail, text, targetstrip, group, wildcards,
CNAME loops and chains).
"""

from __future__ import annotations

import dataclasses

import dns.rdatatype

from skydns import answering, msg, settings as settings_mod, store
from tests import dnscase


def leaf(value: str) -> str:
    return msg.leaf_label(value)


def k2s(host: str, port: int = 0) -> str:
    """A kube2sky value: priority 10, weight 10, ttl 30."""
    return msg.encode(msg.Service(host=host, port=port, priority=10, weight=10, ttl=30))


SVC = "/skydns/local/cluster/svc/default"
MYSVC_A = k2s("10.0.0.10")
MYSVC_SRV = k2s("myservice.default.svc.cluster.local.", 80)
DB = {"db-0": "10.1.0.1", "db-1": "10.1.0.2", "10-1-0-3": "10.1.0.3"}
EXT = msg.encode(msg.Service(host="www.example.com.", ttl=30))
ALIAS = msg.encode(msg.Service(host="myservice.default.svc.cluster.local.", ttl=30))
VERSION = msg.encode(msg.Service(text="1.1.0", ttl=28800))
V6 = k2s("fd00::10")

RECORDS: dict[str, str] = {
    # REFERENCE 3.2 worked example (ClusterIP + named port), plus the legacy name.
    f"{SVC}/myservice/{leaf(MYSVC_A)}": MYSVC_A,
    f"{SVC}/myservice/_tcp/_http/{leaf(MYSVC_A)}": MYSVC_SRV,
    f"/skydns/local/cluster/default/myservice/{leaf(MYSVC_A)}": MYSVC_A,
    # headless db: one directory per endpoint with a hash leaf, SRV leaves per endpoint
    **{f"{SVC}/db/{ep}/{leaf(k2s(ip))}": k2s(ip) for ep, ip in DB.items()},
    **{f"{SVC}/db/_tcp/_pg/{leaf(k2s(f'{ep}.db.default.svc.cluster.local.', 5432))}":
       k2s(f"{ep}.db.default.svc.cluster.local.", 5432) for ep in DB},
    # dual-stack-ish: an IPv6 service
    f"{SVC}/v6/{leaf(V6)}": V6,
    # ExternalName (out of zone) and an in-zone alias
    f"{SVC}/ext/{leaf(EXT)}": EXT,
    f"{SVC}/alias/{leaf(ALIAS)}": ALIAS,
    # dns-version TXT
    f"/skydns/local/cluster/dns-version/{leaf(VERSION)}": VERSION,
    # reverse records
    msg.ip_to_reverse_key("10.0.0.10") + "/" + leaf(MYSVC_A): msg.encode(
        msg.Service(host="myservice.default.svc.cluster.local.", ttl=30)),
    msg.ip_to_reverse_key("10.1.0.1") + "/x": msg.encode(
        msg.Service(host="db-0.db.default.svc.cluster.local.", ttl=30)),
    msg.ip_to_reverse_key("fd00::10") + "/x": msg.encode(
        msg.Service(host="v6.default.svc.cluster.local.", ttl=30)),
    # nameservers and apex of cluster.local
    "/skydns/local/cluster/dns/ns/ns1": msg.encode(msg.Service(host="10.0.0.53", ttl=60)),
    "/skydns/local/cluster/dns/ns/ns2": msg.encode(msg.Service(host="fd00::53", ttl=60)),
    "/skydns/local/cluster/dns/apex/a1": msg.encode(msg.Service(host="10.0.0.53", ttl=60)),
    # an SRV record pointing at the legacy name (in-zone name target with glue)
    f"{SVC}/legacy/_tcp/_http/x": msg.encode(
        msg.Service(host="myservice.default.cluster.local.", port=8080, ttl=30)),
    # -- hand-written SkyDNS records in skydns.local. ------------------------------------
    # SkyDNS README: a service behind a name outside the zone
    "/skydns/local/skydns/east/production/rails/1": '{"host":"service5.example.com","priority":20}',
    # mail
    "/skydns/local/skydns/mail/mx1": '{"host":"10.2.0.1","mail":true,"priority":5}',
    "/skydns/local/skydns/mail/mx2": '{"host":"mx.other.example.","mail":true}',
    "/skydns/local/skydns/mail/web": '{"host":"10.2.0.3"}',
    # text (one short, one longer than 255 bytes)
    "/skydns/local/skydns/text/t1": '{"text":"hello world","ttl":60}',
    "/skydns/local/skydns/long/t1": '{"text":"' + "a" * 300 + '"}',
    # targetstrip: SRV target region1.strip.skydns.local. (leaf label x1 stripped)
    "/skydns/local/skydns/strip/region1/x1": '{"host":"10.3.0.1","port":8080,"targetstrip":1}',
    # group: the shallowest record's group filters the deeper ones
    "/skydns/local/skydns/dom/a": '{"host":"10.4.0.1","group":"g1"}',
    "/skydns/local/skydns/dom/sub/b": '{"host":"10.4.0.2","group":"g2"}',
    "/skydns/local/skydns/dom/sub/c": '{"host":"10.4.0.3"}',
    "/skydns/local/skydns/dom/sub/d": '{"host":"10.4.0.4","group":"g1"}',
    # wildcards
    "/skydns/local/skydns/region1/svc1/a": '{"host":"10.5.1.1"}',
    "/skydns/local/skydns/region1/svc2/a": '{"host":"10.5.1.2"}',
    "/skydns/local/skydns/region2/svc1/a": '{"host":"10.5.2.1"}',
    # CNAME loops, a self alias, a dangling in-zone alias
    "/skydns/local/skydns/loop1/x": '{"host":"loop2.skydns.local."}',
    "/skydns/local/skydns/loop2/x": '{"host":"loop1.skydns.local."}',
    "/skydns/local/skydns/self/x": '{"host":"self.skydns.local."}',
    "/skydns/local/skydns/dangle/x": '{"host":"nothere.skydns.local."}',
    # chains: c1 -> ... -> c9 (8 CNAMEs, answered); d1 -> ... -> d10 (9 CNAMEs, dropped)
    **{f"/skydns/local/skydns/c{i}/x": f'{{"host":"c{i + 1}.skydns.local."}}' for i in range(1, 9)},
    "/skydns/local/skydns/c9/x": '{"host":"10.8.0.9"}',
    **{f"/skydns/local/skydns/d{i}/x": f'{{"host":"d{i + 1}.skydns.local."}}' for i in range(1, 10)},
    "/skydns/local/skydns/d10/x": '{"host":"10.8.1.10"}',
    # a chain leaving the zones half-way: out1 -> out2 -> www.example.org.
    "/skydns/local/skydns/out1/x": '{"host":"out2.skydns.local."}',
    "/skydns/local/skydns/out2/x": '{"host":"www.example.org."}',
    # SRV weights: priority 10 with weights 10, 20, 0 (=100); priority 20 alone
    "/skydns/local/skydns/weights/a": '{"host":"10.6.0.1","port":80,"priority":10,"weight":10}',
    "/skydns/local/skydns/weights/b": '{"host":"10.6.0.2","port":80,"priority":10,"weight":20}',
    "/skydns/local/skydns/weights/c": '{"host":"10.6.0.3","port":80,"priority":10}',
    "/skydns/local/skydns/weights/d": '{"host":"10.6.0.4","port":80,"priority":20,"weight":5}',
    # identical records under two keys
    "/skydns/local/skydns/dup/a": '{"host":"10.7.0.1","ttl":40}',
    "/skydns/local/skydns/dup/b": '{"host":"10.7.0.1","ttl":40}',
    # both families and one alias under one name; ttls differ
    "/skydns/local/skydns/mixed/a": '{"host":"10.9.0.1","ttl":50}',
    "/skydns/local/skydns/mixed/b": '{"host":"10.9.0.2","ttl":70}',
    "/skydns/local/skydns/mixed/c": '{"host":"fd00::9"}',
    # a record with no host: only TXT can use it
    "/skydns/local/skydns/nohost/x": '{"port":80}',
}

REVISION = 42
VIEW = store.Store.from_records(RECORDS, revision=REVISION)
# An upstream is configured (RA is set only when forwarding is possible); nothing is sent to it.
SETTINGS = settings_mod.Settings(domains=("cluster.local.", "skydns.local."),
                                 nameservers=(settings_mod.Upstream("192.0.2.53"),))

SOA_CLUSTER = ("cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
               f"{REVISION} 7200 1800 86400 30")
SOA_SKYDNS = ("skydns.local. 30 IN SOA ns.dns.skydns.local. hostmaster.skydns.local. "
              f"{REVISION} 7200 1800 86400 30")


def run(case: dnscase.Case, view: store.Store = VIEW,
        settings: settings_mod.Settings = SETTINGS) -> answering.Reply | answering.Forward | answering.Resolve:
    """Answer a case's query and check the result kind; return the result."""
    query = dnscase.make_query(case)
    result = answering.answer(query, view, settings)
    kinds = {"reply": answering.Reply, "forward": answering.Forward, "resolve": answering.Resolve}
    assert isinstance(result, kinds[case.kind]), f"{case.ident}: got {result!r}"
    if isinstance(result, answering.Forward):
        assert result.query is query
    if isinstance(result, answering.Resolve):
        assert case.resolve is not None
        assert (result.name, result.rdtype) == (
            msg.normalize(case.resolve[0]), dns.rdatatype.from_text(case.resolve[1]))
    return result


def check(case: dnscase.Case, view: store.Store = VIEW, settings: settings_mod.Settings = SETTINGS,
          fallback: dnscase.Case | None = None) -> None:
    """Run a case and compare the reply (for Reply and Resolve results).

    For a Resolve, ``fallback`` is the reply expected when the forwarders have nothing.
    """
    result = run(case, view, settings)
    if isinstance(result, (answering.Reply, answering.Resolve)):
        dnscase.assert_reply(result.message, case, payload=settings.edns_payload)
    if isinstance(result, answering.Resolve):
        assert result.fallback is not None
        if fallback is not None:
            dnscase.assert_reply(result.fallback, fallback, payload=settings.edns_payload)


def with_settings(**changes: object) -> settings_mod.Settings:
    return dataclasses.replace(SETTINGS, **changes)
