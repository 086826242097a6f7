"""answering's fast steps proved by difference: for random stores and queries, ``plan`` with
its shortcuts (plain IPv4 read without ``ipaddress``, Section.extend inline, glue of address-only
targets without ``_chase``, SRV/MX targets cached) equals ``plan`` with the plain steps. The dnspython differential
tests cannot see these: both of their sides read the same plan.

Seeded and reproducible; the seed is in the test id.
"""

from __future__ import annotations

import functools
import ipaddress
import random

import pytest

from skydns import answering, msg, rrs, settings as settings_mod, store, wire
from tests.skydns import test_anscache_diff as gen

# Hosts near the IPv4 rules: leading zeros, too few or too many octets, out of range.
ODD_HOSTS = ["010.0.0.1", "1.2.3", "256.1.1.1", "1.2.3.04", "0.0.0.0", "255.255.255.255", "1.2.3.4.5",
             "::ffff:1.2.3.4", "fd00::1", "10.0.0.1", "e1.web.cluster.local."]


def _plain_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answering, "_kind", functools.lru_cache(maxsize=None)(msg.host_type))
    monkeypatch.setattr(answering, "_ip", lambda host: str(ipaddress.ip_address(host)))
    monkeypatch.setattr(answering, "_GLUE_ADDRESSES", False)
    monkeypatch.setattr(answering, "_target", lambda host, key, strip, prefix: rrs.target(
        msg.Service(host=host, key=key, targetstrip=strip), prefix))

    def extend(self, items, qtext):
        for owner, rdtype, ttl, rdata in items:
            self.add(owner, qtext, rdtype, ttl, rdata)

    monkeypatch.setattr(answering.Section, "extend", extend)


@pytest.mark.parametrize("host", ODD_HOSTS)
def test_address_reading_agrees_with_ipaddress(host):
    assert answering._kind(host) is msg.host_type(host)
    if answering._kind(host) in (msg.HostType.IPV4, msg.HostType.IPV6):
        assert answering._ip(host) == str(ipaddress.ip_address(host))


@pytest.mark.parametrize("seed", range(4))
def test_plan_with_shortcuts_equals_plan_with_plain_steps(seed, monkeypatch):
    rng = random.Random(500 + seed)
    settings = settings_mod.Settings(domains=("cluster.local.", "0.10.in-addr.arpa."), pods="insecure",
                                     max_answers=rng.choice([3, 20, 1000]))
    compared = glued = 0
    for _ in range(4):
        view = store.Store()
        view.replace([], 1)
        for revision in range(2, rng.randint(10, 70)):
            if rng.random() < 0.2:  # an endpoint name with addresses of both families, or odd ones
                leaf = rng.choice(["e1.web", "e2.web", "db-0.db"])
                host = rng.choice(ODD_HOSTS if rng.random() < 0.2 else ["10.0.0.2", "2001:db8::5", "10.0.0.1"])
                view.put(f"/skydns/local/cluster/{'/'.join(reversed(leaf.split('.')))}/l{revision % 3}",
                         f'{{"host":"{host}","ttl":{rng.choice([5, 30])}}}'.encode(), revision)
                view.put(f"/skydns/local/cluster/web/_tcp/_http/l{revision % 4}",
                         f'{{"host":"{leaf}.cluster.local.","port":80}}'.encode(), revision)
            else:
                view.put(gen._key(rng), gen._value(rng), revision)
        if rng.random() < 0.7:
            view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', 100)
        written = list(view.records())
        queries = []
        for _ in range(120):
            data, _proto = gen._query(rng, written)
            query = wire.parse(data)
            if query is not None:
                queries.append(query)
        queries += [wire.parse(gen.dns.message.make_query(name, qtype).to_wire())
                    for name in ("_http._tcp.web.cluster.local.", "web.cluster.local.") for qtype in ("SRV", "A")]
        fast = [answering.plan(wire.path_of(q.qname), q.qtype, q.qclass, view, settings) for q in queries]
        with monkeypatch.context() as patch:
            _plain_steps(patch)
            plain = [answering.plan(wire.path_of(q.qname), q.qtype, q.qclass, view, settings) for q in queries]
        for query, got, want in zip(queries, fast, plain):
            assert got == want, (seed, wire.path_of(query.qname), query.qtype)
            compared += 1
            glued += bool(getattr(got, "additional", None))
    assert compared > 400 and glued > 10
