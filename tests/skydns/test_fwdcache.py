"""skydns.fwdcache: TTL arithmetic, kinds, eviction and serve-stale, with `now` passed in."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from skydns import fwdcache

SOA = ". {ttl} IN SOA a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 {minimum}"


def rrs(*lines: str) -> tuple[dns.rrset.RRset, ...]:
    return tuple(dns.rrset.from_text(*line.split(maxsplit=4)) for line in lines)


def ans(rcode=dns.rcode.NOERROR, answer=(), authority=(), additional=()) -> fwdcache.Answer:
    return fwdcache.Answer(rcode, 0, rrs(*answer), rrs(*authority), rrs(*additional))


def key(name: str = "www.example.com.") -> fwdcache.Key:
    return fwdcache.Key(name, 1, 1)


def ttls(answer: fwdcache.Answer) -> list[int]:
    return [rrset.ttl for section in (answer.answer, answer.authority, answer.additional) for rrset in section]


@pytest.mark.parametrize(
    "answer, kind, seconds",
    [
        (ans(answer=["www.example.com. 300 IN A 192.0.2.1"]), fwdcache.Kind.SUCCESS, 300),
        (ans(answer=["www.example.com. 7200 IN A 192.0.2.1"]), fwdcache.Kind.SUCCESS, 3600),
        (ans(answer=["www.example.com. 300 IN CNAME x.example.net.", "x.example.net. 20 IN A 192.0.2.1"]),
         fwdcache.Kind.SUCCESS, 20),
        (ans(answer=["www.example.com. 300 IN A 192.0.2.1"], additional=["ns.example.com. 5 IN A 192.0.2.9"]),
         fwdcache.Kind.SUCCESS, 5),
        (ans(answer=["www.example.com. 0 IN A 192.0.2.1"]), fwdcache.Kind.SUCCESS, 0),
        (ans(dns.rcode.NXDOMAIN, authority=[SOA.format(ttl=900, minimum=10)]), fwdcache.Kind.DENIAL, 10),
        (ans(dns.rcode.NXDOMAIN, authority=[SOA.format(ttl=15, minimum=60)]), fwdcache.Kind.DENIAL, 15),
        (ans(dns.rcode.NXDOMAIN, authority=[SOA.format(ttl=900, minimum=900)]), fwdcache.Kind.DENIAL, 30),
        (ans(authority=[SOA.format(ttl=900, minimum=20)]), fwdcache.Kind.DENIAL, 20),
        (ans(dns.rcode.NXDOMAIN), fwdcache.Kind.DENIAL, 0),
        (ans(dns.rcode.SERVFAIL), None, None),
        (ans(dns.rcode.REFUSED), None, None),
    ],
    ids=["positive", "positive-capped", "cname-chain-lowest", "additional-counts", "ttl-0",
         "nx-soa-minimum", "nx-soa-ttl", "nx-capped", "nodata", "nx-without-soa", "servfail", "refused"],
)
def test_kind_and_lifetime(answer, kind, seconds):
    assert fwdcache.classify(answer) is kind
    if kind is not None:
        assert fwdcache.lifetime(answer, kind, 3600, 30) == seconds


def test_ttls_count_down_by_whole_seconds():
    cache = fwdcache.Cache(max_ttl=3600)
    stored = ans(answer=["www.example.com. 300 IN A 192.0.2.1"], additional=["x.example.com. 100 IN A 192.0.2.2"])
    assert cache.put(key(), stored, now=1000.0) is fwdcache.Kind.SUCCESS
    rows = [(now, cache.get(key(), now)) for now in (1000.0, 1000.9, 1042.5, 1099.9, 1100.0)]
    assert [(now, ttls(hit[0]) if hit else None) for now, hit in rows] == [
        (1000.0, [300, 100]),
        (1000.9, [300, 100]),
        (1042.5, [258, 58]),
        (1099.9, [201, 1]),
        (1100.0, None),  # lifetime (lowest TTL, 100 s) is over
    ]
    assert ttls(stored) == [300, 100]  # entries are never changed by serving


def test_negative_answer_counts_down_soa():
    cache = fwdcache.Cache(max_negative_ttl=30)
    cache.put(key(), ans(dns.rcode.NXDOMAIN, authority=[SOA.format(ttl=900, minimum=60)]), now=0.0)
    hit, kind = cache.get(key(), 12.0)
    assert kind is fwdcache.Kind.DENIAL
    assert hit.rcode == dns.rcode.NXDOMAIN
    assert ttls(hit) == [888]
    assert cache.get(key(), 30.0) is None


def test_uncacheable_answers_are_not_kept():
    cache = fwdcache.Cache()
    assert cache.put(key(), ans(dns.rcode.SERVFAIL), 0.0) is None
    assert cache.put(key(), ans(answer=["www.example.com. 0 IN A 192.0.2.1"]), 0.0) is None
    assert fwdcache.Cache(capacity=0).put(key(), ans(answer=["www.example.com. 9 IN A 192.0.2.1"]), 0.0) is None
    assert len(cache) == 0


def test_bounded_size_evicts_least_recently_used():
    cache = fwdcache.Cache(capacity=3)
    for i, name in enumerate(("a.", "b.", "c.")):
        cache.put(key(name), ans(answer=[f"{name} 300 IN A 192.0.2.{i}"]), now=0.0)
    assert cache.get(key("a."), 1.0) is not None  # a is now the most recently used
    cache.put(key("d."), ans(answer=["d. 300 IN A 192.0.2.9"]), now=2.0)
    assert len(cache) == 3
    assert [cache.get(key(n), 3.0) is not None for n in ("a.", "b.", "c.", "d.")] == [True, False, True, True]
    assert cache.count(fwdcache.Kind.SUCCESS) == 3 and cache.count(fwdcache.Kind.DENIAL) == 0


def test_replacing_a_key_keeps_counts_right():
    cache = fwdcache.Cache()
    cache.put(key(), ans(answer=["www.example.com. 300 IN A 192.0.2.1"]), 0.0)
    cache.put(key(), ans(dns.rcode.NXDOMAIN, authority=[SOA.format(ttl=60, minimum=60)]), 1.0)
    assert len(cache) == 1
    assert (cache.count(fwdcache.Kind.SUCCESS), cache.count(fwdcache.Kind.DENIAL)) == (0, 1)


@pytest.mark.parametrize(
    "now, expected",
    [(50.0, [50]), (100.0, [fwdcache.STALE_TTL]), (150.0, [fwdcache.STALE_TTL]), (160.0, [fwdcache.STALE_TTL]),
     (160.5, None)],
    ids=["fresh", "just-expired", "stale", "window-edge", "past-window"],
)
def test_serve_stale_window(now, expected):
    cache = fwdcache.Cache(stale=60.0)
    cache.put(key(), ans(answer=["www.example.com. 100 IN A 192.0.2.1"]), now=0.0)
    hit = cache.get_stale(key(), now)
    assert (ttls(hit[0]) if hit else None) == expected


def test_get_keeps_expired_entries_for_stale_then_drops_them():
    cache = fwdcache.Cache(stale=10.0)
    cache.put(key(), ans(answer=["www.example.com. 100 IN A 192.0.2.1"]), now=0.0)
    assert cache.get(key(), 105.0) is None and len(cache) == 1
    assert cache.get(key(), 111.0) is None and len(cache) == 0


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: dns.message.make_query("WWW.Example.COM", "A"), fwdcache.Key("www.example.com.", 1, 1, False, False)),
        (lambda: dns.message.make_query("x.example.", "AAAA", want_dnssec=True), fwdcache.Key("x.example.", 28, 1, True, False)),
        (lambda: dns.message.make_query("x.example.", "MX", flags=dns.flags.RD | dns.flags.CD),
         fwdcache.Key("x.example.", 15, 1, False, True)),
    ],
    ids=["case-folded", "do-bit", "cd-bit"],
)
def test_key_for(make, expected):
    assert fwdcache.key_for(make()) == expected


def test_answer_from_keeps_sections_and_relayed_flags():
    reply = dns.message.make_response(dns.message.make_query("www.example.com.", "A"))
    reply.flags |= dns.flags.AA | dns.flags.AD | dns.flags.TC
    reply.answer.append(dns.rrset.from_text("www.example.com.", 60, "IN", "A", "192.0.2.1"))
    got = fwdcache.answer_from(reply)
    assert got.flags == dns.flags.AA | dns.flags.AD
    assert got.answer == tuple(reply.answer) and got.rcode == dns.rcode.NOERROR


def _rendered() -> tuple[bytes, dns.message.Message]:
    query = dns.message.make_query("www.example.com.", "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "web.example.com."))
    reply.answer.append(dns.rrset.from_text("web.example.com.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    reply.authority.append(dns.rrset.from_text("example.com.", 900, "IN", "NS", "ns1.example.com."))
    reply.additional.append(dns.rrset.from_text("ns1.example.com.", 7, "IN", "A", "192.0.2.53"))
    return reply.to_wire(), reply


def test_ttl_offsets_find_every_ttl_but_opt():
    out, _ = _rendered()
    offsets = fwdcache.ttl_offsets(out)
    assert [int.from_bytes(out[o:o + 4], "big") for o in offsets] == [300, 60, 60, 900, 7]


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 11, _rendered()[0][:-3], _rendered()[0] + b"\x00"],
    ids=["empty", "short-header", "cut", "trailing"],
)
def test_ttl_offsets_of_bad_messages(data):
    assert fwdcache.ttl_offsets(data) is None


@pytest.mark.parametrize("seconds, expected", [(0, [300, 60, 60, 900, 7]), (10, [290, 50, 50, 890, 0]),
                                               (400, [0, 0, 0, 500, 0])])
def test_age_wire(seconds, expected):
    out, _ = _rendered()
    offsets = fwdcache.ttl_offsets(out)
    aged = fwdcache.age_wire(out, offsets, seconds)
    assert [int.from_bytes(aged[o:o + 4], "big") for o in offsets] == expected
    assert len(aged) == len(out)
    assert sorted(rr.to_text() for rr in dns.message.from_wire(aged).answer[1]) == ["192.0.2.1", "192.0.2.2"]


def test_encoded_counts_from_render_time_and_expires():
    out, _ = _rendered()
    offsets = fwdcache.ttl_offsets(out)
    # stored at 100, rendered at 103.5 (TTLs then already 3 s lower), lifetime 60 s
    encoded = fwdcache.Encoded(fwdcache.age_wire(out, offsets, 3), offsets, 100.0, 3, 160.0)
    first = encoded.at(103.9)
    later = encoded.at(130.2)
    assert [int.from_bytes(first[o:o + 4], "big") for o in offsets][:2] == [297, 57]
    assert [int.from_bytes(later[o:o + 4], "big") for o in offsets][:2] == [270, 30]
    assert encoded.at(160.0) is None


def test_entry_times():
    cache = fwdcache.Cache()
    cache.put(key(), ans(answer=["www.example.com. 100 IN A 192.0.2.1"]), now=5.0)
    assert cache.entry_times(key()) == (5.0, 105.0)
    assert cache.entry_times(key("other.")) is None


# -- issue 9.3 / 10.6: forget(name), failures, encoded replies by key ---------------------------

A = "{name} 300 IN A 192.0.2.1"


def test_forget_drops_every_entry_of_one_name_only():
    cache = fwdcache.Cache(100)
    names = ("1.0.0.10.in-addr.arpa.", "2.0.0.10.in-addr.arpa.")
    for name in names:
        for rdtype, do, cd in ((1, False, False), (12, False, False), (1, True, False), (1, False, True)):
            assert cache.put(fwdcache.Key(name, rdtype, 1, do, cd), ans(answer=[A.format(name=name)]), 0.0)
    assert cache.forget("1.0.0.10.in-addr.arpa.") == 4
    assert cache.forget("1.0.0.10.in-addr.arpa.") == 0
    assert len(cache) == 4 and cache.count(fwdcache.Kind.SUCCESS) == 4
    assert cache.get(fwdcache.Key(names[0], 1, 1), 1.0) is None
    assert cache.get(fwdcache.Key(names[1], 1, 1), 1.0) is not None


def test_forget_index_follows_eviction_and_replacement():
    cache = fwdcache.Cache(2)
    for i in range(3):
        cache.put(key(f"n{i}.example."), ans(answer=[A.format(name=f"n{i}.example.")]), float(i))
    cache.put(key("n2.example."), ans(answer=[A.format(name="n2.example.")]), 3.0)
    assert cache.forget("n0.example.") == 0  # evicted already
    assert cache.forget("n2.example.") == 1
    assert len(cache) == 1


@pytest.mark.parametrize(
    "ttl, capacity, at, failed",
    [(5.0, 10, 4.9, True), (5.0, 10, 5.0, False), (0.0, 10, 0.1, False), (5.0, 0, 0.1, False)],
    ids=["fresh", "expired", "off", "no-room"],
)
def test_failures_expire(ttl, capacity, at, failed):
    failures = fwdcache.Failures(capacity, ttl)
    failures.put(key(), 100.0)
    assert failures.failed(key(), 100.0 + at) is failed
    assert not failures.failed(key("other.example."), 100.0)


def test_failures_are_bounded_and_forgotten():
    failures = fwdcache.Failures(2, 5.0)
    for i in range(3):
        failures.put(key(f"n{i}.example."), 0.0)
    assert len(failures) == 2 and not failures.failed(key("n0.example."), 1.0)
    assert failures.forget("n1.example.") == 1
    assert not failures.failed(key("n1.example."), 1.0) and failures.failed(key("n2.example."), 1.0)
    failures.clear()
    assert len(failures) == 0


def test_encodings_by_key_with_forget():
    enc = fwdcache.Encodings(2)
    entry = fwdcache.Encoded(b"x" * 12, (), 0.0, 0, 10.0)
    enc.put(("a", 1), "a.example.", entry)
    enc.put(("a", 28), "a.example.", entry)
    enc.put(("b", 1), "b.example.", entry)  # full: the oldest, ("a", 1), goes
    assert enc.get(("a", 1)) is None and enc.get(("a", 28)) is entry
    assert enc.forget("a.example.") == 1
    assert len(enc) == 1 and enc.get(("b", 1)) is entry
    enc.drop(("b", 1))
    assert enc.forget("b.example.") == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bytes_stay_within_the_budget_whatever_upstreams_send(seed):
    """Rule 4: with max_bytes, the entries' sizes never add up to more than the budget, the
    least recently used go first (as a plain model says), and an answer bigger than the whole
    budget is not kept; forget and replacement keep the count right."""
    import collections
    import random

    rng = random.Random(seed)
    cache = fwdcache.Cache(capacity=50, max_bytes=20_000)
    model: collections.OrderedDict = collections.OrderedDict()  # key -> size
    for step in range(3000):
        name = f"n{rng.randrange(40)}.example."
        roll = rng.random()
        if roll < 0.6:
            text = " ".join(f'"{"x" * rng.choice([10, 200, 255])}"' for _ in range(rng.choice([1, 3, 30, 120])))
            answer = ans(answer=[f"{name} 300 IN TXT {text}"] if rng.random() < 0.5 else
                         [f"{name} 300 IN A 192.0.2.{i}" for i in range(1, rng.choice([2, 5, 40]))])
            got = cache.put(key(name), answer, 0.0)
            size = fwdcache.size_of(answer)
            if size <= 20_000:
                assert got is fwdcache.Kind.SUCCESS
                model.pop(key(name), None)
                while model and (len(model) >= 50 or sum(model.values()) + size > 20_000):
                    model.popitem(last=False)
                model[key(name)] = size
            else:
                assert got is None  # not kept; an answer kept before stays, as for an error
        elif roll < 0.9:
            if cache.get(key(name), 0.0) is not None:
                model.move_to_end(key(name))
        else:
            cache.forget(name)
            model.pop(key(name), None)
        assert list(cache._entries) == list(model), f"seed {seed} step {step}"
        assert cache.bytes == sum(model.values()) <= 20_000


def test_encodings_stay_within_their_budget():
    enc = fwdcache.Encodings(100, max_bytes=5_000)
    small = fwdcache.Encoded(b"x" * 1000, (30,), 0.0, 0, 10.0)
    for n in range(10):
        enc.put(("n", n), f"n{n}.example.", small)
        assert enc.bytes <= 5_000
    assert len(enc) == 3 and enc.get(("n", 9)) is small and enc.get(("n", 6)) is None
    enc.put(("big", 1), "big.example.", fwdcache.Encoded(b"x" * 6_000, (), 0.0, 0, 10.0))
    assert enc.get(("big", 1)) is None and len(enc) == 3  # bigger than the budget: not kept
    assert enc.forget("n9.example.") == 1 and enc.bytes == 2 * (1000 + 400 + 40)
    enc.clear()
    assert enc.bytes == 0
