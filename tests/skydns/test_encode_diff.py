"""The hand-built encoder proved by difference: for random stores and random queries, the bytes
``encode.reply`` writes for an answering plan equal what dnspython renders for the same answer
(``answering.answer`` + ``transport.render``), round-robin rotations and truncation included.

Seeded and reproducible; the seed is in the test id.
"""

from __future__ import annotations

import random

import dns.message
import pytest

from skydns import answering, encode, settings as settings_mod, store, transport, wire
from tests.skydns import test_anscache_diff as gen


def _store(rng: random.Random, size: int) -> store.Store:
    view = store.Store()
    view.replace([], 1)
    for revision in range(2, size + 2):
        view.put(gen._key(rng), gen._value(rng), revision)
    if rng.random() < 0.7:  # mostly a kube2sky zone
        view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', size + 2)
    return view


@pytest.mark.parametrize("seed", range(6))
def test_encoder_writes_what_dnspython_renders(seed):
    rng = random.Random(seed)
    settings = settings_mod.Settings(domains=("cluster.local.", "0.10.in-addr.arpa."),
                                     nameservers=(settings_mod.Upstream("192.0.2.53"),) if seed % 2 else (),
                                     pods="insecure", max_answers=rng.choice([3, 20, 1000]),
                                     hostmaster="" if seed % 3 else "Admin@Example.org")
    rendered = truncated = 0
    for _ in range(4):
        view = _store(rng, rng.randint(5, 60))
        written = list(view.records())
        for _ in range(150):
            data, _proto = gen._query(rng, written)
            query = wire.parse(data)
            assert query is not None
            result = answering.plan(wire.path_of(query.qname), query.qtype, query.qclass, view, settings)
            if not isinstance(result, answering.Plan):
                continue
            message = answering.answer(dns.message.from_wire(data), view, settings).message
            limit = rng.choice([512, 1232, 65535])
            count = encode.rotations(result, transport.ROTATIONS)
            together = encode.replies(query, result, answering.can_forward(settings), settings.edns_payload,
                                      limit, count)
            rendered_all = encode.render(query, result, answering.can_forward(settings), settings.edns_payload,
                                         limit, count)
            assert rendered_all is not None and rendered_all[0] == together
            # the serial offsets the encoder reports are where the SOA serials are
            assert list(rendered_all[1]) == [wire.soa_serial_offsets(v) for v in together]
            for turn in range(count):
                got = encode.reply(query, result, answering.can_forward(settings), settings.edns_payload,
                                   limit, turn)
                saved = transport._rotated(message, turn)
                want = transport.render(message, limit)
                for index, rrset in saved:
                    message.answer[index] = rrset
                assert got is not None, f"seed {seed}: the encoder gave up on\n{message}"
                rendered += 1
                truncated += bool(got[2] & 0x02)
                assert together is not None and together[turn] == got  # rendered once, rotated as spans
                assert got == want, (f"seed {seed}: {dns.message.from_wire(data).question[0]} turn {turn}\n"
                                     f"encoder:\n{dns.message.from_wire(got)}\ndnspython:\n{message}")
    assert rendered > 300  # most plans were written by the encoder


def test_unsupported_names_fall_back():
    result = answering.Plan(answer=[[None, "x.cluster.local.", 5, 30, ["caf\u00e9.example."]]])
    query = wire.parse(dns.message.make_query("x.cluster.local.", "CNAME").to_wire())
    assert encode.reply(query, result, True, 1232, 65535) is None  # IDNA: dnspython's job


@pytest.mark.parametrize("seed", range(3))
def test_encoder_truncates_like_dnspython(seed):
    """Big answers (headless services, SRV with glue, mixed families) against small limits."""
    rng = random.Random(100 + seed)
    view = store.Store()
    view.replace([], 1)
    revision = 1
    for svc in range(3):
        for ep in range(rng.randint(20, 120)):
            revision += 1
            host = f"10.{svc}.{ep // 250}.{ep % 250}" if rng.random() < 0.8 else f"fd00::{svc}:{ep}"
            view.put(f"/skydns/local/cluster/svc/ns/s{svc}/ep{ep}/l1", f'{{"host":"{host}","ttl":30}}'.encode(), revision)
            view.put(f"/skydns/local/cluster/svc/ns/s{svc}/_tcp/_p/l{ep}",
                     f'{{"host":"ep{ep}.s{svc}.ns.svc.cluster.local.","port":80,"ttl":30}}'.encode(), revision)
    view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', revision + 1)
    settings = settings_mod.Settings(domains=("cluster.local.",), max_answers=1000)
    truncated = 0
    for _ in range(60):
        name = rng.choice([f"s{rng.randrange(3)}.ns.svc.cluster.local.", f"_p._tcp.s{rng.randrange(3)}.ns.svc.cluster.local.",
                           f"s{rng.randrange(3)}.ns.svc.cluster.local."])
        query_message = dns.message.make_query(name, rng.choice(["A", "AAAA", "SRV"]), use_edns=rng.choice([False, 0]),
                                               payload=rng.choice([512, 1232, 4096]))
        data = query_message.to_wire()
        query = wire.parse(data)
        limit = wire.udp_limit(query, settings.edns_payload)
        result = answering.plan(wire.path_of(query.qname), query.qtype, query.qclass, view, settings)
        message = answering.answer(dns.message.from_wire(data), view, settings).message
        count = encode.rotations(result, transport.ROTATIONS)
        together = encode.replies(query, result, False, settings.edns_payload, limit, count)
        assert together is not None
        variants, serials = encode.render(query, result, False, settings.edns_payload, limit, count)
        assert variants == together and list(serials) == [wire.soa_serial_offsets(v) for v in together]
        for turn in range(count):
            saved = transport._rotated(message, turn)
            want = transport.render(message, limit)
            for index, rrset in saved:
                message.answer[index] = rrset
            assert together[turn] == want, f"{name} turn {turn} limit {limit}"
            truncated += bool(want[2] & 0x02)
    assert truncated > 10


@pytest.mark.parametrize("seed", range(3))
def test_glue_sections_written_at_once_like_dnspython(seed, monkeypatch):
    """An additional section of many one-address RRsets (a headless service's SRV glue) is
    written at once (``encode._glue_run``) exactly as record by record and as dnspython renders
    it: owners below names already written or not, below each other, the query name itself,
    repeated, both families, TTLs, limits that cut the additional section or the answer."""
    rng = random.Random(1300 + seed)
    settings = settings_mod.Settings(domains=("cluster.local.",))
    at_once = 0
    for _ in range(250):
        qname = rng.choice(["_p._tcp.big.ns.svc.cluster.local.", "big.ns.svc.cluster.local."])
        query_message = dns.message.make_query(qname, "SRV", use_edns=rng.choice([False, 0]), payload=4096)
        data = query_message.to_wire()
        query = wire.parse(data)
        n = rng.randint(1, 60)
        suffixes = ["big.ns.svc.cluster.local.", "other.ns.svc.cluster.local.", "cluster.local."]
        mixed = rng.random() < 0.3  # some owners below names not written before
        owners = [f"e{k}." + (rng.choice(suffixes) if mixed else suffixes[0]) for k in range(n)]
        if rng.random() < 0.2:  # a name below another glue name, the query name, a top-level name
            owners.append(rng.choice([f"x.{owners[0]}", qname, "local."]))
        rng.shuffle(owners)
        answer = [[None, qname, 33, 30, [(10, 10, 80, owner) for owner in owners]]]
        additional = []
        for owner in owners:
            if rng.random() < 0.9:
                value = (1, f"10.0.{rng.randrange(3)}.{rng.randrange(250)}")
            else:
                value = (28, "fd00::1")
            additional.append([None if owner == qname else owner, owner, value[0], rng.choice([5, 30]), [value[1]]])
        if rng.random() < 0.15:  # both families: a name twice in a row
            at = rng.randrange(len(additional))
            additional.insert(at + 1, additional[at][:2] + [28 if additional[at][2] == 1 else 1, 30,
                                                          ["fd00::2" if additional[at][2] == 1 else "10.9.9.2"]])
        if rng.random() < 0.1:
            rrset = rng.choice(additional)  # two records: not at once
            rrset[4].append("10.9.9.9" if rrset[2] == 1 else "fd00::9")
        result = answering.Plan(answer=answer if rng.random() < 0.8 else [], additional=additional)
        limit = rng.choice([512, 1232, 2000, 4096, 65535])
        got = encode.render(query, result, False, settings.edns_payload, limit, 1)
        calls = []
        real = encode._glue_run
        monkeypatch.setattr(encode, "_glue_run", lambda *a: calls.append(real(*a)) or calls[-1])
        encode.render(query, result, False, settings.edns_payload, limit, 1)
        monkeypatch.setattr(encode, "_GLUE_RUN", 10**9)
        plain = encode.render(query, result, False, settings.edns_payload, limit, 1)
        monkeypatch.undo()
        message = answering.to_message(dns.message.from_wire(data), result, settings)
        want = transport.render(message, limit)
        assert got == plain and got[0] == [want], (seed, qname, limit)
        at_once += any(calls)
    assert at_once > 60


def test_ipv4_packing_is_as_strict_as_ipaddress():
    """encode packs exactly the IPv4 texts ``ipaddress`` reads, with the C library's inet_pton
    and with its own reading (and answering's test agrees)."""
    import ipaddress

    rng = random.Random(77)
    octets = ["0", "00", "1", "01", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300", "",
              "a", "\u0661", " 1", "1\n", "0x1", "1\0", "+1", "-0"]
    texts = [".".join(rng.choice(octets) for _ in range(rng.choice([3, 4, 4, 4, 5]))) for _ in range(20000)]
    for text in texts + ["1.2.3.4", "0.0.0.0", "255.255.255.255", "1.2.3.4\n"]:
        try:
            want = ipaddress.IPv4Address(text).packed
        except ValueError:
            want = None
        for pack in (encode._packed4, encode._packed4_text, encode._packed4_pton):
            try:
                got = pack(text)
            except encode.Unsupported:
                got = None
            assert got == want, (pack.__name__, text)
        assert answering._plain_ipv4(text) is (want is not None), text


@pytest.mark.parametrize("qname", ["gone.ns.svc.cluster.local.", "GONE.ns.svc.cluster.local.", "x.cluster.local."])
def test_negative_soa_written_again_like_dnspython(qname):
    """A negative answer's SOA (kept as bytes after its first rendering, the serial written in)
    is what dnspython renders, for other serials and TTLs, and with records after it that
    compress against the names it wrote."""
    settings = settings_mod.Settings(domains=("cluster.local.",))
    data = dns.message.make_query(qname, "A", use_edns=0).to_wire()
    query = wire.parse(data)
    for serial, ttl, glue in [(7, 30, False), (8, 30, False), (2**32 - 1, 5, False), (9, 30, True), (10, 30, False)]:
        soa = ("ns.dns.cluster.local.", "hostmaster.cluster.local.", serial, 7200, 1800, 86400, ttl)
        result = answering.Plan(rcode=3, authority=[["cluster.local.", "cluster.local.", 6, ttl, [soa]]],
                                additional=[["ns.dns.cluster.local.", "ns.dns.cluster.local.", 1, 30, ["10.0.0.53"]]]
                                if glue else [])
        got = encode.render(query, result, False, settings.edns_payload, 65535, 1)
        want = transport.render(answering.to_message(dns.message.from_wire(data), result, settings), 65535)
        assert got == ([want], (tuple(wire.soa_serial_offsets(want)),)), (qname, serial, glue)


_LONE_CASES = [
    # (query name, type, EDNS, DO, RD, RA, record TTL, address, limit)
    ("web.bench.svc.cluster.local.", "A", False, False, True, False, 30, "10.96.0.20", 512),
    ("WeB.Bench.svc.cluster.local.", "A", 0, False, True, True, 5, "10.96.0.21", 1232),
    ("web.bench.svc.cluster.local.", "AAAA", 0, True, False, False, 0, "fd00::1", 65535),
    ("cluster.local.", "A", False, False, False, True, 2**31 - 1, "192.0.2.1", 512),
    ("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + ".cluster.local.", "AAAA", 0, False, True, False, 30,
     "2001:db8::ffff", 512),
    ("a-b_c.cluster.local.", "A", 0, True, True, True, 1, "0.0.0.0", 4096),
]


@pytest.mark.parametrize("qname,rdtype,edns,do,rd,ra,ttl,address,limit", _LONE_CASES)
def test_lone_address_written_like_dnspython(qname, rdtype, edns, do, rd, ra, ttl, address, limit, monkeypatch):
    """Rule 8: a plan of one A/AAAA of the query name is written straight, byte for byte what
    the general renderer and dnspython write (the ID, RD, RA, AA, TTL, OPT and DO included)."""
    settings = settings_mod.Settings(domains=("cluster.local.",))
    message = dns.message.make_query(qname, rdtype, use_edns=edns, want_dnssec=do, payload=1232)
    message.id = 4242
    if not rd:
        message.flags &= ~dns.flags.RD
    data = message.to_wire()
    query = wire.parse(data)
    qtype = query.qtype
    result = answering.Plan(answer=[[None, qname.lower(), qtype, ttl, [address]]])
    got = encode.render(query, result, ra, settings.edns_payload, limit, 1)
    want = transport.render(answering.to_message(dns.message.from_wire(data), result, settings), limit)
    if ra:
        want = bytearray(want)
        want[3] |= 0x80  # RA: to_message follows the settings (no forwarders), the encoder its argument
        want = bytes(want)
    assert encode._lone_address(query, result, result.answer[0], ra, settings.edns_payload, limit) is not None
    monkeypatch.setattr(encode, "_LONE", False)
    general = encode.render(query, result, ra, settings.edns_payload, limit, 1)
    assert got == general == ([want], ((),)), qname
