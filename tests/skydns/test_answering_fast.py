"""answering's fast steps proved by difference: for random stores and queries, ``plan`` with
its shortcuts (plain IPv4 read without ``ipaddress``, Section.extend inline, glue of address-only
targets without ``_chase``, SRV/MX targets cached, the glue of many targets below one name read
at once) equals ``plan`` with the plain steps. The dnspython differential
tests cannot see these: both of their sides read the same plan.

Seeded and reproducible; the seed is in the test id.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import random

import hypothesis
import hypothesis.strategies
import pytest

from skydns import anscache, answering, msg, rrs, settings as settings_mod, store, wire
from tests.skydns import test_anscache_diff as gen

# Hosts near the IPv4 rules: leading zeros, too few or too many octets, out of range.
ODD_HOSTS = ["010.0.0.1", "1.2.3", "256.1.1.1", "1.2.3.04", "0.0.0.0", "255.255.255.255", "1.2.3.4.5",
             "::ffff:1.2.3.4", "fd00::1", "10.0.0.1", "e1.web.cluster.local."]


def _plain_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answering, "_kind", functools.lru_cache(maxsize=None)(msg.host_type))
    monkeypatch.setattr(answering, "_ip", lambda host: str(ipaddress.ip_address(host)))
    monkeypatch.setattr(answering, "_GLUE_ADDRESSES", False)
    monkeypatch.setattr(answering, "_BATCH_GLUE", False)
    monkeypatch.setattr(answering, "_BULK", False)
    monkeypatch.setattr(answering, "_MEMO_TARGETS", False)
    monkeypatch.setattr(answering, "_MEMO_GLUE", False)
    monkeypatch.setattr(answering, "_MEMO_ADDRESSES", False)
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


# Endpoint leaves of the headless service ``big.ns.svc.cluster.local.`` and what they hold.
BIG = "/skydns/local/cluster/svc/ns/big"
BIG_LEAVES = [f"e{n}" for n in range(8)] + ["E9", "_x", "*", "any", "deep"]
BIG_HOSTS = ["10.0.0.1", "10.0.0.2", "fd00::1", "010.0.0.1", "web.cluster.local.", "e1.big.ns.svc.cluster.local.",
             "ext.example.org.", "gone.cluster.local."]
BIG_TARGETS = [f"e{n}.big.ns.svc.cluster.local." for n in range(10)] + [
    "E9.big.ns.svc.cluster.local.", "_x.big.ns.svc.cluster.local.", "*.big.ns.svc.cluster.local.",
    "any.big.ns.svc.cluster.local.", "deep.big.ns.svc.cluster.local.", "web.cluster.local.",
    "e1.other.ns.svc.cluster.local.", "e2.other.ns.svc.cluster.local.", "10-0-0-9.ns.pod.cluster.local.",
    "a.e3.big.ns.svc.cluster.local.", "z.big.ns.svc.cluster.local", "ext.example.org."]


def _big_store(rng: random.Random) -> store.Store:
    """A headless service whose SRV targets lie below it (with several records, CNAMEs, odd
    spellings, groups, wildcard and hidden labels) and outside it, some of them missing."""
    view = store.Store()
    view.replace([], 1)
    revision = 2
    for leaf in BIG_LEAVES:
        for n in range(rng.choice([0, 1, 1, 2, 3])):
            record = {"host": rng.choice(BIG_HOSTS), "ttl": rng.choice([5, 30])}
            if rng.random() < 0.1:
                record["group"] = rng.choice(["g1", "g2"])
            key = f"{BIG}/{leaf}" + rng.choice(["", "", f"/r{n}", "/_tcp/h"])
            view.put(key if rng.random() < 0.9 else key.upper().replace("/SKYDNS/", "/skydns/"),
                     json.dumps(record).encode(), revision)
            revision += 1
    for n, target in enumerate(rng.sample(BIG_TARGETS, rng.randint(4, len(BIG_TARGETS)))):
        port = rng.choice([80, 443])
        view.put(f"{BIG}/_tcp/_pg/t{n}", json.dumps({"host": target, "port": port, "ttl": 30,
                                                    "priority": rng.choice([0, 10]), "mail": True}).encode(),
                 revision)
        revision += 1
    if rng.random() < 0.7:
        view.put(f"{BIG}/e5", b'{"host":"10.0.0.7","port":5432}', revision)
    for key, host in (("/skydns/local/cluster/web", "10.0.0.3"), ("/skydns/local/cluster/svc/ns/other/e1", "10.1.0.1"),
                      ("/skydns/local/cluster/svc/ns/other/e2", "fd00::2")):
        view.put(key, json.dumps({"host": host}).encode(), revision)
        revision += 1
    if rng.random() < 0.8:
        view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', revision)
    return view


def _touches(reads: anscache.Reads, key: tuple[str, ...]) -> bool:
    cache = anscache.AnswerCache(4)
    cache.put("k", anscache.Entry([b""], "z", 1), reads)
    return cache.changed(key) == 1


@pytest.mark.parametrize("seed", range(6))
def test_batched_glue_equals_glue_per_target(seed, monkeypatch):
    """SRV/MX with many targets below the service (the batched glue read) answers as with one
    glue read per target, and its reads cover every key the per-target reads would see."""
    rng = random.Random(700 + seed)
    batched = 0
    for _ in range(25):
        view = _big_store(rng)
        domains = rng.choice([("cluster.local.",), ("cluster.local.", "e2.big.ns.svc.cluster.local.")])
        settings = settings_mod.Settings(domains=domains, pods="insecure", max_answers=rng.choice([5, 30, 1000]))
        keys = [tuple(seg.lower() for seg in key[len("/skydns/"):].split("/")) for key in view.records()]
        for name in ("_pg._tcp.big.ns.svc.cluster.local.", "big.ns.svc.cluster.local.", "*._tcp.big.ns.svc.cluster.local."):
            path = wire.path_of(gen.dns.message.make_query(name, "SRV").question[0].name.to_wire())
            for qtype in (gen.dns.rdatatype.SRV, gen.dns.rdatatype.MX):
                for steps in ((), ("_GLUE_ADDRESSES",)):
                    with monkeypatch.context() as patch:
                        for step in steps:
                            patch.setattr(answering, step, False)
                        fast_reads = anscache.Reads(view)
                        calls = []
                        real = answering._batched
                        patch.setattr(answering, "_batched", lambda ctx, chosen, groups=None, runs=None: calls.append(1) or real(ctx, chosen, groups, runs))
                        fast = answering.plan(path, qtype, 1, fast_reads, settings)
                        patch.setattr(answering, "_BATCH_GLUE", False)
                        plain_reads = anscache.Reads(view)
                        plain = answering.plan(path, qtype, 1, plain_reads, settings)
                    assert fast == plain, (seed, name, qtype)
                    batched += bool(calls)
                    probes = set(keys)
                    for dep in plain_reads.visible | plain_reads.below | plain_reads.exact:
                        probes.update((dep, dep + ("q",), dep + ("_q", "r")))
                    for key in probes:
                        if _touches(plain_reads, key):
                            assert _touches(fast_reads, key), (seed, name, key)
    assert batched > 50


def _section_state(section: answering.Section) -> tuple:
    return section.rrsets(), section.count, {key: set(seen) for key, seen in section._seen.items()}


@pytest.mark.parametrize("seed", range(3))
def test_section_extend_equals_add_one_by_one(seed):
    """Section.extend (with its whole-RRset steps for many items) leaves the section exactly as
    ``add`` of each item in turn: RRsets, order, TTLs, duplicates, the cap, the query name's
    own RRsets (owner None) meeting the same name written out."""
    rng = random.Random(900 + seed)
    qtext = "q.cluster.local."
    owners = [None, qtext, "a.cluster.local.", "b.cluster.local."] + [f"e{n}.cluster.local." for n in range(30)]
    bulk = 0
    for _ in range(3000):
        limit = rng.choice([1, 5, 9, 20, 40, 1000])
        shape = rng.random()
        if shape < 0.35:  # one RRset, many records (a big answer)
            owner, rdtype = rng.choice(owners[:4]), rng.choice([1, 28, 33])
            items = [(owner, rdtype, rng.choice([5, 30, 60]), f"10.0.0.{rng.randrange(40)}")
                     for _ in range(rng.randint(0, 30))]
        elif shape < 0.7:  # many owners, one record each (glue), sometimes a repeat
            chosen = rng.sample(owners, rng.randint(0, len(owners)))
            items = [(owner, rng.choice([1, 28]), rng.choice([5, 30]), f"10.1.0.{n}") for n, owner in enumerate(chosen)]
            if items and rng.random() < 0.2:
                items.append(rng.choice(items))
        else:  # anything
            items = [(rng.choice(owners), rng.choice([1, 28]), rng.choice([5, 30]), f"10.2.0.{rng.randrange(6)}")
                     for _ in range(rng.randint(0, 25))]
        before = [(rng.choice(owners), rng.choice([1, 28, 33]), rng.choice([5, 30]), f"10.0.0.{rng.randrange(40)}")
                  for _ in range(rng.choice([0, 0, 1, 3]))]
        fast, plain = answering.Section(limit), answering.Section(limit)
        for owner, rdtype, ttl, rdata in before:
            fast.add(owner, qtext, rdtype, ttl, rdata)
            plain.add(owner, qtext, rdtype, ttl, rdata)
        fast.extend(items, qtext)
        for owner, rdtype, ttl, rdata in items:
            plain.add(owner, qtext, rdtype, ttl, rdata)
        assert _section_state(fast) == _section_state(plain), (seed, limit, before, items)
        # and again on top (the whole-RRset steps must see what is already there)
        fast.extend(items[::-1], qtext)
        for owner, rdtype, ttl, rdata in items[::-1]:
            plain.add(owner, qtext, rdtype, ttl, rdata)
        assert _section_state(fast) == _section_state(plain), (seed, limit, before, items)
        bulk += len(items) >= answering._BULK_MIN and len(items) + len(before) < limit
    assert bulk > 500


def _headless_store(rng: random.Random) -> store.Store:
    """kube2sky's headless service (one IPv4 address per endpoint leaf, an SRV record per
    endpoint naming it), plain or with one kind of thing on one to three endpoints that makes
    the batched glue fall back or differ: a label that cannot be glued from the service's read,
    a second record, an only record that is not IPv4, a deeper record, a capital in a key, a
    missing endpoint, a target twice, a record at the service name itself."""
    view = store.Store()
    view.replace([], 1)
    base = "/skydns/local/cluster/svc/ns/hl"
    revision = 2
    n = rng.randint(4, 40)
    odd = rng.choice([None, "weird", "second", "only", "deep", "capital", "missing", "twice", "top"])
    marked = set(rng.sample(range(n), rng.randint(1, 3)))
    ttl = rng.choice([0, 30])  # of the SRV records (0: the default TTL)
    for k in range(n):
        leaf = f"e{k}"
        hit = k in marked
        if hit and odd == "weird":
            leaf = rng.choice(["_h", "E9", "any"])
        records = [{"host": f"10.9.{k // 200}.{k % 200 + 1}", "ttl": rng.choice([0, 30])}]
        if hit and odd == "only":
            records = [rng.choice([{"host": "fd00::7"}, {"text": "t"}, {"host": "10.9.9.7", "group": "g2"},
                                   {"host": "e1.hl.ns.svc.cluster.local."}])]
        if hit and odd == "second":
            records.append(rng.choice([{"host": "fd00::9"}, {"host": "10.9.9.9"}, {"text": "t"},
                                       {"host": "10.9.9.8", "group": "g1"}, {"host": "x.cluster.local."}]))
        for m, record in enumerate(records):
            key = f"{base}/{leaf}" + (f"/r{m}" if m or (hit and odd == "deep") else "")
            if hit and odd == "capital":
                key = key.replace("/hl/", "/HL/")
            if not (hit and odd == "missing"):
                view.put(key, json.dumps(record).encode(), revision)
                revision += 1
        for m in range(2 if hit and odd == "twice" else 1):
            view.put(f"{base}/_tcp/_pg/{leaf}{m}", json.dumps(
                {"host": f"{leaf}.hl.ns.svc.cluster.local.", "port": 5432 + m, "ttl": ttl, "mail": True}).encode(),
                revision)
            revision += 1
    if odd == "top":  # a record at the service name itself
        view.put(base, json.dumps(rng.choice([{"host": "10.9.9.1"}, {"host": "10.9.9.1", "group": "g1"}])).encode(),
                 revision)
    view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', revision)
    return view


@pytest.mark.parametrize("seed", range(4))
def test_headless_srv_equals_plain_steps(seed, monkeypatch):
    """SRV/MX of a headless service (targets memoised, the glue of every target read at once
    and added as one batch) equals the plan of the plain steps, also after a change of one
    endpoint's address, and reads what the plain steps read."""
    rng = random.Random(1100 + seed)
    compared = 0
    for _ in range(40):
        view = _headless_store(rng)
        settings = settings_mod.Settings(domains=("cluster.local.",), max_answers=rng.choice([10, 1000]),
                                         ttl=rng.choice([30, 3600]))
        for step in range(3):
            if step:
                leaf = f"e{rng.randrange(40)}"
                view.put(f"/skydns/local/cluster/svc/ns/hl/{leaf}",
                         json.dumps({"host": f"10.8.0.{rng.randrange(250)}"}).encode(), 1000 + step)
            for name in ("_pg._tcp.hl.ns.svc.cluster.local.", "hl.ns.svc.cluster.local."):
                path = wire.path_of(gen.dns.message.make_query(name, "SRV").question[0].name.to_wire())
                for qtype in (gen.dns.rdatatype.SRV, gen.dns.rdatatype.MX):
                    fast_reads = anscache.Reads(view)
                    fast = answering.plan(path, qtype, 1, fast_reads, settings)
                    again = answering.plan(path, qtype, 1, view, settings)  # memoised now
                    other = dataclasses.replace(settings, ttl=settings.ttl + 1)
                    moved = answering.plan(path, qtype, 1, view, other)
                    with monkeypatch.context() as patch:
                        _plain_steps(patch)
                        plain_reads = anscache.Reads(view)
                        plain = answering.plan(path, qtype, 1, plain_reads, settings)
                        assert moved == answering.plan(path, qtype, 1, view, other), (seed, name, qtype)
                    assert fast == plain == again, (seed, name, qtype)
                    for dep in plain_reads.visible | plain_reads.below | plain_reads.exact:
                        for key in (dep, dep + ("q",)):
                            if _touches(plain_reads, key):
                                assert _touches(fast_reads, key), (seed, name, key)
                    compared += 1
    assert compared == 480


_NAME_TEXT = hypothesis.strategies.lists(
    hypothesis.strategies.sampled_from(["a", "b-1", "_tcp", "*", "x" * 63, "y" * 64, "", "@", "\\", "\\.", "é",
                                        "A", "0", " ", "z" * 20]),
    max_size=16).map(".".join)


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(_NAME_TEXT, hypothesis.strategies.sampled_from(["", ".", ".."]))
def test_valid_name_agrees_with_dnspython(text, end):
    """answering._valid_name's check of plain ASCII names says what dnspython's parse says
    (label sizes, empty labels, the 255-byte limit, the root, escapes and non-ASCII left to
    dnspython)."""
    import dns.exception

    text += end
    answering._valid_name.cache_clear()
    try:
        rrs.name(text)
        want = True
    except dns.exception.DNSException:
        want = False
    assert answering._valid_name(text) is want, text


@pytest.mark.parametrize("seed", range(5))
def test_all_addresses_reads_ipv4_runs_as_host_by_host(seed):
    """_all_addresses's one match over the hosts (a line each) says what msg.host_type says
    host by host, with odd hosts (leading zeros, short, IPv6, names, a newline) among them."""
    rng = random.Random(seed)
    hosts = ODD_HOSTS + ["10.0.0.2", "10.0.0.3", "1.2.3.4\n5.6.7.8", "", "9.9.9.9 "]
    for _ in range(2000):
        chosen = [rng.choice(hosts if rng.random() < 0.3 else ["10.0.0.2", "10.0.0.3", "192.0.2.1"])
                  for _ in range(rng.randint(1, 12))]
        records = [msg.Service(host=host, ttl=rng.choice([0, 30])) for host in chosen]
        want = all(msg.host_type(host) is msg.HostType.IPV4 for host in chosen)
        got = answering._all_addresses(records, msg.HostType.IPV4, 7)
        assert (got is not None) is want, chosen
        if got is not None:
            assert got == (chosen, [rec.ttl or 7 for rec in records])
