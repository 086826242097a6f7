"""wire: hand parsing of plain queries, cache keys and patching of cached answers."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from skydns import wire


def query(name: str = "web.default.svc.cluster.local.", rdtype: str = "A", *, id: int = 0x1234,
          edns: int = -1, payload: int = 1232, want_dnssec: bool = False, options=(), rd: bool = True) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload,
                               want_dnssec=want_dnssec, options=list(options))
    q.id = id
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def header(id=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return b"".join(n.to_bytes(2, "big") for n in (id, flags, qd, an, ns, ar))


QNAME = b"\x03web\x07default\x03svc\x07cluster\x05local\x00"

PARSED = [
    ("plain A", query(), dict(id=0x1234, qname=QNAME, qtype=1, qclass=1, edns=False, payload=512, do=False)),
    ("AAAA mixed case", query("WeB.Default.SVC.cluster.local.", "AAAA"),
     dict(qname=b"\x03WeB\x07Default\x03SVC\x07cluster\x05local\x00", qtype=28)),
    ("EDNS 4096", query(edns=0, payload=4096), dict(edns=True, payload=4096, do=False)),
    ("EDNS DO", query(edns=0, want_dnssec=True), dict(edns=True, payload=1232, do=True)),
    ("EDNS with cookie option", query(edns=0, options=[dns.edns.GenericOption(10, b"12345678")]),
     dict(edns=True, payload=1232)),
    ("EDNS payload below 512", query(edns=0, payload=100), dict(edns=True, payload=100)),
    ("EDNS cookie and padding", query(edns=0, options=[dns.edns.GenericOption(10, b"c" * 24),
                                                       dns.edns.GenericOption(12, b"\x00" * 5)]),
     dict(edns=True)),
    ("root name", query(".", "NS"), dict(qname=b"\x00", qtype=2)),
    ("no RD", query(rd=False), dict(flags=0)),
    ("SRV", query("_http._tcp.web.default.svc.cluster.local.", "SRV"), dict(qtype=33)),
    ("CHAOS class", dns.message.make_query("version.bind.", "TXT", "CH").to_wire(), dict(qclass=3)),
]


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in PARSED], ids=[row[0] for row in PARSED])
def test_parse(data, expected):
    parsed = wire.parse(data)
    assert parsed is not None
    for field, value in expected.items():
        assert getattr(parsed, field) == value, field
    assert parsed.size == len(data)


_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # root, OPT, payload 1232, v0, no flags, rdlen 0
_Q = QNAME + b"\x00\x01\x00\x01"

UNUSUAL = [
    ("empty", b""),
    ("11 bytes", b"\x00" * 11),
    ("header only", header()),
    ("response QR=1", header(flags=0x8100) + _Q),
    ("opcode NOTIFY", header(flags=0x2000) + _Q),
    ("opcode UPDATE", header(flags=0x2800) + _Q),
    ("TC set in query", header(flags=0x0300) + _Q),
    ("two questions", header(qd=2) + _Q + _Q),
    ("no question", header(qd=0)),
    ("answer count", header(an=1) + _Q),
    ("authority count", header(ns=1) + _Q),
    ("two additional", header(ar=2) + _Q + _OPT + _OPT),
    ("qdcount 257", header(qd=257) + _Q),
    ("compression pointer", header() + b"\x03www\xc0\x0c\x00\x01\x00\x01"),
    ("pointer loop", header() + b"\xc0\x0c\x00\x01\x00\x01"),
    ("extended label type", header() + b"\x41" + b"x" * 65 + b"\x00\x00\x01\x00\x01"),
    ("label runs past the end", header() + b"\x3fabc"),
    ("no terminating zero", header() + b"\x03www"),
    ("name longer than 255", header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 3 + b"\x05ccccc\x00\x00\x01\x00\x01"),
    ("missing qtype", header() + QNAME),
    ("half qclass", header() + QNAME + b"\x00\x01\x00"),
    ("trailing garbage", header() + _Q + b"\x00"),
    ("additional not OPT", header(ar=1) + _Q + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x01\x02\x03\x04"),
    ("OPT not at root", header(ar=1) + _Q + b"\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"),
    ("OPT version 1", header(ar=1) + _Q + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00"),
    ("OPT extended rcode", header(ar=1) + _Q + b"\x00\x00\x29\x04\xd0\x01\x00\x00\x00\x00\x00"),
    ("OPT truncated", header(ar=1) + _Q + _OPT[:7]),
    ("OPT rdlength past the end", header(ar=1) + _Q + _OPT[:-2] + b"\x00\x08"),
    ("OPT rdlength short of the end", header(ar=1) + _Q + _OPT + b"\x00\x00"),
    ("TSIG-like additional", query(edns=0) + b"\x00"),
    # an option whose length runs past the OPT rdata: dnspython says FORMERR, so must the cache
    ("OPT option past rdlength", header(ar=1) + _Q + _OPT[:-2] + b"\x00\x07\x00\x0a\x00\x14abc"),
    ("OPT half option header", header(ar=1) + _Q + _OPT[:-2] + b"\x00\x03\x00\x0a\x00"),
    # options dnspython checks (ECS, EDE, ...) or does not know, and a bad cookie: dnspython path
    ("OPT bad cookie length", query(edns=0, options=[dns.edns.GenericOption(10, b"abc")])),
    ("OPT ECS", query(edns=0, options=[dns.edns.ECSOption("10.0.0.0", 8)])),
    ("OPT unknown option", query(edns=0, options=[dns.edns.GenericOption(65001, b"abc")])),
]


@pytest.mark.parametrize("data", [row[1] for row in UNUSUAL], ids=[row[0] for row in UNUSUAL])
def test_parse_returns_none_for_anything_unusual(data):
    assert wire.parse(data) is None


def test_parse_accepts_longest_legal_name():
    name = b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 2 + b"\x3d" + b"c" * 61 + b"\x00"
    assert len(name) == 255
    parsed = wire.parse(header() + name + b"\x00\x01\x00\x01")
    assert parsed is not None and parsed.qname == name


LIMITS = [
    ("no EDNS", query(), 1232, 512),
    ("EDNS larger than ours", query(edns=0, payload=4096), 1232, 1232),
    ("EDNS smaller than ours", query(edns=0, payload=800), 1232, 800),
    ("EDNS below 512", query(edns=0, payload=100), 1232, 512),
    ("our payload below 512", query(edns=0, payload=4096), 400, 512),
]


@pytest.mark.parametrize(("data", "ours", "limit"), [r[1:] for r in LIMITS], ids=[r[0] for r in LIMITS])
def test_udp_limit(data, ours, limit):
    assert wire.udp_limit(wire.parse(data), ours) == limit


KEY_PAIRS = [
    ("case is ignored", query("WEB.default.svc.cluster.local."), query("web.DEFAULT.svc.cluster.local."), True),
    ("id and RD are ignored", query(id=1), query(id=2, rd=False), True),
    ("EDNS options are ignored", query(edns=0), query(edns=0, options=[dns.edns.GenericOption(10, b"abcdefgh")]), True),
    ("qtype differs", query(rdtype="A"), query(rdtype="AAAA"), False),
    ("name differs", query("a.cluster.local."), query("b.cluster.local."), False),
    ("EDNS presence differs", query(), query(edns=0, payload=512), False),
    ("DO differs", query(edns=0), query(edns=0, want_dnssec=True), False),
]


@pytest.mark.parametrize(("a", "b", "same"), [r[1:] for r in KEY_PAIRS], ids=[r[0] for r in KEY_PAIRS])
def test_cache_key(a, b, same):
    qa, qb = wire.parse(a), wire.parse(b)
    assert (wire.cache_key(qa, 512) == wire.cache_key(qb, 512)) is same


def test_cache_key_includes_limit():
    q = wire.parse(query(edns=0))
    assert wire.cache_key(q, 512) != wire.cache_key(q, 1232)


def _answer_for(data: bytes, *records: str, additional=()) -> bytes:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    name = q.question[0].name
    for text in records:
        r.answer.append(dns.rrset.from_text(name, 30, "IN", *text.split(" ", 1)))
    for text in additional:
        owner, rest = text.split(" ", 1)
        r.additional.append(dns.rrset.from_text(owner, 30, "IN", *rest.split(" ", 1)))
    return r.to_wire()


PATCHES = [
    ("same case", "web.default.svc.cluster.local.", "web.default.svc.cluster.local."),
    ("upper to lower", "WEB.DEFAULT.SVC.CLUSTER.LOCAL.", "web.default.svc.cluster.local."),
    ("0x20 mixed", "web.default.svc.cluster.local.", "wEb.DeFaUlT.sVc.ClUsTeR.lOcAl."),
]


@pytest.mark.parametrize(("first", "second"), [r[1:] for r in PATCHES], ids=[r[0] for r in PATCHES])
@pytest.mark.parametrize("rd", [True, False], ids=["rd", "nord"])
def test_patch_equals_fresh_render(first, second, rd):
    cached = _answer_for(query(first, id=1), "A 10.0.0.1", "A 10.0.0.2",
                         additional=(f"x.{first} A 10.9.9.9",))
    data = query(second, id=0xBEEF, rd=rd)
    fresh = _answer_for(data, "A 10.0.0.1", "A 10.0.0.2", additional=(f"x.{second} A 10.9.9.9",))
    patched = wire.patch(cached, wire.parse(data))
    assert patched == fresh
    reply = dns.message.from_wire(patched)
    assert reply.id == 0xBEEF
    assert bool(reply.flags & dns.flags.RD) is rd
    assert reply.flags & dns.flags.AA
    assert reply.question[0].name.to_text() == second
    # owner names compressed to the question take the query's letter case
    assert reply.answer[0].name.to_text() == second
    assert dns.message.from_wire(data).is_response(reply)


def test_patch_keeps_other_flags_and_rcode():
    data = query("nope.cluster.local.")
    r = dns.message.make_response(dns.message.from_wire(data))
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.flags |= dns.flags.AA | dns.flags.TC
    patched = wire.patch(r.to_wire(), wire.parse(query("NOPE.cluster.local.", id=7, rd=False)))
    reply = dns.message.from_wire(patched)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.TC and reply.flags & dns.flags.QR
    assert not reply.flags & dns.flags.RD
    assert wire.rcode(patched) == dns.rcode.NXDOMAIN


ERRORS = [
    ("short", b"\x00" * 11, None),
    ("header only", header(id=0xABCD, flags=0x0100), header(id=0xABCD, flags=0x8101, qd=0)),
    ("keeps opcode", header(id=1, flags=0x2000), header(id=1, flags=0xA001, qd=0)),
    ("garbage", b"\xff" * 40, header(id=0xFFFF, flags=0xF901, qd=0)),
]


@pytest.mark.parametrize(("data", "expected"), [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS])
def test_formerr(data, expected):
    assert wire.formerr(data) == expected


QUESTION_ENDS = [
    ("plain query", query(), 12 + len(QNAME) + 4),
    ("question then two OPTs", header(ar=2) + _Q + _OPT + _OPT, 12 + len(_Q)),
    ("question then garbage", header(ar=1) + _Q + b"\xff" * 9, 12 + len(_Q)),
    ("root question", header() + b"\x00\x00\x01\x00\x01", 17),
    ("no question", header(qd=0) + _Q, None),
    ("two questions", header(qd=2) + _Q + _Q, None),
    ("compressed name", header() + b"\x03www\xc0\x0c\x00\x01\x00\x01", None),
    ("name past the end", header() + b"\x3fabc", None),
    ("class cut", header() + QNAME + b"\x00\x01\x00", None),
    ("name longer than 255", header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", None),
]


@pytest.mark.parametrize(("data", "end"), [r[1:] for r in QUESTION_ENDS], ids=[r[0] for r in QUESTION_ENDS])
def test_question_end(data, end):
    assert wire.question_end(data) == end


NAMES = [
    ("root", b"\x00", "."),
    ("two labels", b"\x03www\x07example\x00", "www.example."),
    ("escaped", b"\x03a.b\x02\x00\\\x00", "a\\046b.\\000\\092."),
]


@pytest.mark.parametrize(("name", "text"), [r[1:] for r in NAMES], ids=[r[0] for r in NAMES])
def test_name_to_text(name, text):
    assert wire.name_to_text(name) == text
