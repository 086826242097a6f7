"""The answer cache proved by difference: after every step of a random write/query sequence,
the cached server's answer equals the uncached reference answer for the same store state.

Seeded and reproducible (the seed is in the test id; a failure prints the step history).
The reference is a transport.Handler without a cache: every query goes through dnspython,
``answering.answer`` and ``render`` on the current store. The cached handler sees the same
store changes only through the store's ``on_change`` hook (anscache rules 1-3).
"""

from __future__ import annotations

import json
import random

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest

from skydns import anscache, metrics, settings as settings_mod, store, transport

PREFIX = "/skydns/"
# A small name space so that writes keep hitting names that queries ask for.
LABELS = ["a", "web", "db-0", "_tcp", "_http", "x", "svc", "pod", "ns", "dns", "apex", "10-0-0-1", "*"]
ZONE_KEY = ["local", "cluster"]
REVERSE_KEYS = [["arpa", "in-addr", "10", "0", "0", "1"], ["arpa", "in-addr", "10", "0", "0", "2"],
                ["arpa", "in-addr", "10", "0", "1", "1"]]
HOSTS = ["10.0.0.1", "10.0.0.2", "192.0.2.7", "fd00::1", "2001:db8::5",
         "web.cluster.local.", "a.b.cluster.local.", "db.default.svc.cluster.local.",
         "db-0.db.default.svc.cluster.local.", "x.cluster.local.", "ext.example.org.", "web.cluster.local"]
TYPES = ["A", "AAAA", "TXT", "SRV", "MX", "CNAME", "PTR", "NS", "SOA", "ANY", "HINFO", "CAA"]
PAYLOADS = [None, 512, 1232, 4096]


def _value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.06:
        return rng.choice([b"{bad json", b'{"port":"x"}', b"[]", b'{"host":7}'])
    record: dict[str, object] = {}
    if roll < 0.85:
        record["host"] = rng.choice(HOSTS)
    if rng.random() < 0.2:
        record["text"] = rng.choice(["hello", "v=1", "x" * 300])
    if rng.random() < 0.3:
        record["port"] = rng.choice([80, 443, 5432])
    if rng.random() < 0.3:
        record["priority"] = rng.choice([0, 10, 20])
    if rng.random() < 0.2:
        record["weight"] = rng.choice([0, 5, 50])
    if rng.random() < 0.3:
        record["ttl"] = rng.choice([5, 30, 300])
    if rng.random() < 0.1:
        record["mail"] = True
    if rng.random() < 0.05:
        record["group"] = rng.choice(["g1", "g2"])
    if rng.random() < 0.05:
        record["targetstrip"] = 1
    return json.dumps(record).encode()


def _key(rng: random.Random) -> str:
    if rng.random() < 0.15:
        segments = list(rng.choice(REVERSE_KEYS))
    else:
        segments = list(ZONE_KEY) + [rng.choice(LABELS[:-1]) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.8:
        segments.append(rng.choice(["l1", "l2", "5f106532"]))
    return PREFIX + "/".join(segments)


def _qname(rng: random.Random, written: list[str]) -> str:
    roll = rng.random()
    if written and roll < 0.5:
        # a name near a changed key: the key's own name, a parent, or a sibling
        segments = written[rng.randrange(len(written))][len(PREFIX):].split("/")
        segments = segments[:rng.randint(2, len(segments))]
        if rng.random() < 0.2:
            segments[-1] = rng.choice(LABELS)
        labels = list(reversed(segments))
    elif roll < 0.6:
        labels = list(reversed(rng.choice(REVERSE_KEYS)))[:rng.choice([6, 6, 5])]
    else:
        labels = [rng.choice(LABELS) for _ in range(rng.randint(0, 4))] + ["cluster", "local"]
    name = ".".join(labels) + "."
    # 0x20: random letter case, the cache must hand back the query's spelling
    return "".join(c.upper() if rng.random() < 0.3 else c for c in name)


def _query(rng: random.Random, written: list[str]) -> tuple[bytes, str]:
    message = dns.message.make_query(_qname(rng, written), rng.choice(TYPES), id=rng.randrange(1 << 16))
    payload = rng.choice(PAYLOADS)
    if payload is None:
        message.use_edns(False)
    else:
        message.use_edns(0, dns.flags.DO if rng.random() < 0.2 else 0, payload)
    if rng.random() < 0.1:
        message.flags &= ~dns.flags.RD
    return message.to_wire(), rng.choice(["udp", "udp", "tcp"])


def _canonical(data: bytes) -> list:
    """A reply with each RRset's records sorted: equal for answers differing only in rotation."""
    message = dns.message.from_wire(data)
    out: list = [message.id, message.flags, message.rcode()]
    for section in (message.question, message.answer, message.authority, message.additional):
        out.append([(r.name.to_text(), r.rdtype, r.ttl, sorted(rd.to_text() for rd in r)) for r in section])
    return out


def _settings(round_robin: bool) -> settings_mod.Settings:
    return settings_mod.Settings(domains=("cluster.local.", "0.10.in-addr.arpa."), round_robin=round_robin,
                                 no_rec=True, pods="insecure", max_answers=20)


# The byte budgets the differential tests run with: the default, and one of a few entries
# (transport rule 3e: the oldest answers go all the time).
BUDGETS = [transport.CACHE_BYTES, 12_000]


@pytest.mark.parametrize("cache_bytes", BUDGETS, ids=["default-budget", "small-budget"])
@pytest.mark.parametrize("round_robin", [False, True], ids=["exact-bytes", "round-robin"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cached_answers_equal_fresh_answers_after_every_step(seed, round_robin, cache_bytes):
    rng = random.Random(seed)
    settings = _settings(round_robin)
    view = store.Store()
    view.replace([], 1)
    stats = metrics.DnsStats()
    cached = transport.Handler(settings, view, None, stats=stats, cache_size=64, cache_bytes=cache_bytes)
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    revision = 1
    written: list[str] = []
    asked: list[tuple[bytes, str]] = []
    history: list[str] = []
    for step in range(700):
        if rng.random() < 0.35:
            revision += 1
            if written and rng.random() < 0.3:
                key = rng.choice(written[-8:])  # recent keys: their names were just asked
                view.delete(key, revision)
                history.append(f"del {key}")
            else:
                key, value = _key(rng), _value(rng)
                view.put(key, value, revision)
                written.append(key)
                history.append(f"put {key} {value.decode(errors='replace')}")
            continue
        if asked and rng.random() < 0.5:
            data, proto = rng.choice(asked[-40:])  # asked before: its answer may be cached
        else:
            data, proto = _query(rng, written)
            asked.append((data, proto))
        history.append(f"query {dns.message.from_wire(data).question[0]} {proto}")
        for _ in range(2):  # the second time the exact-bytes cache answers
            got = cached.handle(data, proto)
            want = reference.handle(data, proto)
            assert isinstance(got, bytes) and isinstance(want, bytes)
            if round_robin:
                same = _canonical(got) == _canonical(want)
            else:
                same = got == want
            assert same, (f"seed {seed} step {step}: cached answer differs from the reference\n"
                          + "\n".join(history[-25:])
                          + f"\ncached:\n{dns.message.from_wire(got)}\nreference:\n{dns.message.from_wire(want)}")
    assert stats.cache_hits["answers"] > 50  # the cache did serve (this is not a no-op test)
    _assert_within_budget(cached)


def _assert_within_budget(handler: transport.Handler) -> None:
    """The caches' byte counts are the sums of their entries' sizes, within the budget."""
    cache = handler.cache
    assert cache.bytes == sum(entry.size for entry in cache.entries.values())
    assert cache.bytes <= cache.max_bytes or len(cache.entries) == 1  # one answer bigger than all
    for proto, exact in handler.exact.items():
        assert handler.exact_bytes[proto] == sum(hit[5] for hit in exact.values())
        assert handler.exact_bytes[proto] <= handler.exact_budget or len(exact) == 1


def test_unrelated_write_keeps_entries_and_related_write_drops_them():
    settings = _settings(False)
    view = store.Store.from_records({
        "/skydns/local/cluster/svc/default/web/l1": '{"host":"10.0.0.1"}',
        "/skydns/local/cluster/svc/default/web/_tcp/_http/l1": '{"host":"web.default.svc.cluster.local.","port":80}',
        "/skydns/local/cluster/svc/other/api/l1": '{"host":"10.0.0.9"}',
    })
    handler = transport.Handler(settings, view, None, stats=metrics.DnsStats())

    def ask(name: str, rdtype: str = "A") -> bytes:
        return handler.handle(dns.message.make_query(name, rdtype, use_edns=False).to_wire(), "udp")

    ask("web.default.svc.cluster.local.")
    ask("nothing.default.svc.cluster.local.")  # NXDOMAIN: carries the SOA serial
    assert len(handler.cache) == 2
    view.put("/skydns/local/cluster/svc/other/api/l1", b'{"host":"10.0.0.10"}', 5)
    assert len(handler.cache) == 2  # unrelated: both survive
    nx = dns.message.from_wire(ask("nothing.default.svc.cluster.local."))
    assert nx.authority[0][0].serial == 5  # the serial of the current mirror, patched in
    view.put("/skydns/local/cluster/svc/default/web/_tcp/_http/l2",
             b'{"host":"web.default.svc.cluster.local.","port":81}', 6)
    assert len(handler.cache) == 2  # hidden below web: the A answer did not read it
    view.put("/skydns/local/cluster/svc/default/web/l2", b'{"host":"10.0.0.2"}', 7)
    assert len(handler.cache) == 1  # web's answer is gone, the NXDOMAIN stays
    view.put("/skydns/local/cluster/svc/default/nothing/l1", b'{"host":"10.0.0.3"}', 8)
    assert len(handler.cache) == 0


@pytest.mark.parametrize("segments, dropped", [
    (("local", "cluster", "a", "b", "leaf"), {"visible a.b", "below a", "visible root"}),
    (("local", "cluster", "a", "_x", "leaf"), {"below a"}),
    (("local", "cluster", "a", "_x"), {"below a", "exact _x"}),
])
def test_index_rules(segments, dropped):
    cache = anscache.AnswerCache(10)
    readers = {
        "visible a.b": ("visible", ("local", "cluster", "a", "b")),
        "visible root": ("visible", ("local", "cluster")),
        "below a": ("below", ("local", "cluster", "a")),
        "exact _x": ("exact", ("local", "cluster", "a", "_x")),
        "visible other": ("visible", ("local", "cluster", "c")),
        "exact a": ("exact", ("local", "cluster", "a")),
    }
    for name, (kind, path) in readers.items():
        reads = anscache.Reads(None)
        getattr(reads, kind).add(path)
        cache.put(name, anscache.Entry([b""], "z", 1), reads)
    cache.changed(segments)
    assert set(readers) - set(cache.entries) == dropped


_REPLAY_NAMES = ["web.ns.svc", "db.ns.svc", "a.ns.svc", "_x.ns.svc", "pod.ns"]
_REPLAY_HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.3.4", "fd00::1", "fd00::2", "2001:db8::5",
                 "web.ns.svc.cluster.local.", "ext.example.org.", "010.0.0.1"]


def _replay_value(rng: random.Random) -> bytes:
    roll = rng.random()
    record: dict[str, object] = {"host": rng.choice(_REPLAY_HOSTS[:3] if roll < 0.75 else _REPLAY_HOSTS)}
    if roll < 0.04:
        record["port"] = 80
    elif roll < 0.06:
        record["text"] = "v=1"
    elif roll < 0.08:
        record["group"] = "g1"
    elif roll < 0.1:
        return b"{bad json"
    if rng.random() < 0.5:
        record["ttl"] = rng.choice([0, 5, 30, 2**31])
    return json.dumps(record).encode()


@pytest.mark.parametrize("cache_bytes", BUDGETS, ids=["default-budget", "small-budget"])
@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_replayed_misses_equal_fresh_answers(seed, cache_bytes, monkeypatch):
    """transport rule 3d / answering rule 16: a miss redone from the reads of the dropped entry
    (an A/AAAA answer of one address record, or NODATA beside one) equals the reference after
    random changes of the queried names' records (new addresses and TTLs, the other family,
    ports, texts, groups, names, deletes, siblings, children, wildcards, kube2sky's mark)."""
    rng = random.Random(seed)
    settings = _settings(False)
    view = store.Store()
    view.replace([], 1)
    cached = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=256,
                               cache_bytes=cache_bytes)
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    replayed = {"same": 0, "patched": 0, "refused": 0}
    ids = random.Random(-seed)
    real = transport.answering.replay

    def counting(recipe, reads_view, reads_settings):
        got = real(recipe, reads_view, reads_settings)
        replayed["refused" if got is None else "same" if got[0] == "same" else "patched"] += 1
        return got

    monkeypatch.setattr(transport.answering, "replay", counting)
    revision = 1

    def key_of(name: str, leaf: str = "l1") -> str:
        return PREFIX + "/".join(["local", "cluster"] + list(reversed(name.split(".")))) + "/" + leaf

    for name in _REPLAY_NAMES:
        revision += 1
        view.put(key_of(name), _replay_value(rng), revision)
    history: list[str] = []
    queries = []
    for name in _REPLAY_NAMES:
        for rdtype in ("A", "AAAA"):
            for spelling in (name, name.upper()):
                message = dns.message.make_query(spelling + ".cluster.local.", rdtype, id=7)
                message.use_edns(rng.choice([False, 0]), 0, 1232)
                queries.append((message.to_wire(), rng.choice(["udp", "tcp"])))
    for step in range(900):
        roll = rng.random()
        if roll < 0.3:
            revision += 1
            name = rng.choice(_REPLAY_NAMES)
            change = rng.random()
            if change < 0.8:
                key, value = key_of(name), _replay_value(rng)
            elif change < 0.84:
                key, value = key_of(name, "l2"), _replay_value(rng)  # a sibling record
            elif change < 0.88:
                key, value = key_of("c." + name), _replay_value(rng)  # a child name
            elif change < 0.92:
                key, value = key_of("*.ns.svc"), _replay_value(rng)
            elif change < 0.96:
                key, value = PREFIX + "local/cluster/dns-version/v", b'{"text":"1.1.0"}'
            else:
                key, value = rng.choice([key_of(name), key_of(name, "l2"), PREFIX + "local/cluster/dns-version/v",
                                         key_of("*.ns.svc")]), None
            if value is None:
                view.delete(key, revision)
            else:
                view.put(key, value, revision)
            history.append(f"{'put' if value else 'del'} {key} {value!r}")
            continue
        data, proto = rng.choice(queries)
        history.append(f"query {dns.message.from_wire(data).question[0]} {proto}")
        for _ in range(2):
            data = ids.randbytes(2) + data[2:]  # a new ID: only the bytes after it are kept
            got = cached.handle(data, proto)
            want = reference.handle(data, proto)
            assert got == want, (f"seed {seed} step {step}: cached answer differs from the reference\n"
                                 + "\n".join(history[-20:])
                                 + f"\ncached:\n{dns.message.from_wire(got)}\nreference:\n{dns.message.from_wire(want)}")
    # not a no-op: addresses were patched, NODATA kept, and other changes planned again
    most = 8 if cache_bytes == transport.CACHE_BYTES else 0  # a small budget keeps few to redo
    assert replayed["patched"] > most and replayed["same"] > most and replayed["refused"] > most, replayed
    # every answer counted once, under the same labels and sizes, however it was made
    assert cached.stats.events == reference.stats.events
    _assert_within_budget(cached)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_indexes_and_byte_budget_follow_a_plain_model(seed):
    """anscache rules 1, 2 and 4 against a plain model: entries (oldest first) with the paths
    they read, dropped by a change exactly as rule 1 says, the oldest evicted past either
    bound. Paths come from a small pool, so that one path is read by none, one or many
    entries (the index holds a lone key or a set) and goes back and forth between those."""
    rng = random.Random(seed)
    pool = [("local", "cluster") + tail for tail in
            [(), ("a",), ("a", "b"), ("a", "_x"), ("a", "_x", "y"), ("c",), ("c", "d"), ("a", "b", "e")]]
    cache = anscache.AnswerCache(12, 12 * (anscache.ENTRY_BYTES + 2 * anscache.PATH_BYTES) + 400)
    model: dict[int, tuple[dict[str, tuple], int]] = {}  # key -> (paths per kind, size), oldest first

    def touches(kind: str, path: tuple, segments: tuple) -> bool:
        if kind == "exact":
            return path == segments
        if segments[:len(path)] != path:
            return False
        return kind == "below" or not any(seg[:1] == "_" for seg in segments[len(path):])

    for step in range(3000):
        if rng.random() < 0.6:
            key = rng.randrange(30)
            reads = anscache.Reads(None)
            paths = {kind: tuple(rng.sample(pool, rng.choice([0, 1, 1, 2]))) for kind in ("visible", "below", "exact")}
            for kind, chosen in paths.items():
                getattr(reads, kind).update(chosen)
            entry = anscache.Entry([bytes(rng.choice([10, 60, 300]))], "z", 1)
            cache.put(key, entry, reads)
            model.pop(key, None)
            size = entry.size
            while model and (len(model) >= cache.capacity or sum(s for _, s in model.values()) + size > cache.max_bytes):
                del model[next(iter(model))]
            model[key] = ({kind: tuple(reads_of) for kind, reads_of in
                           (("visible", reads.visible), ("below", reads.below), ("exact", reads.exact))}, size)
        else:
            segments = rng.choice(pool) + rng.choice([(), ("leaf",), ("_y", "leaf")])
            cache.changed(segments)
            for key in [k for k, (paths, _) in model.items()
                        if any(touches(kind, p, segments) for kind, read in paths.items() for p in read)]:
                del model[key]
        assert list(cache.entries) == list(model), f"seed {seed} step {step}"
        assert cache.bytes == sum(size for _, size in model.values()) <= cache.max_bytes
    # the indexes hold exactly the live entries' paths, a lone key where one entry reads a path
    for kind, index in (("visible", cache._visible), ("below", cache._below), ("exact", cache._exact)):
        want: dict[tuple, set] = {}
        for key, (paths, _) in model.items():
            for path in paths[kind]:
                want.setdefault(path, set()).add(key)
        got = {path: keys if isinstance(keys, set) else {keys} for path, keys in index.items()}
        assert got == want
        assert all(len(keys) > 1 for keys in index.values() if isinstance(keys, set))


def test_glue_with_two_aliases_has_one_cname_in_both_paths():
    """The glue of an MX target whose A and AAAA follow different aliases (one to an in-zone
    name with an address, one out of our zones) gives the owner one CNAME, the last added, in
    the fast path as in the reference (dnspython's singleton rule): the fast path wrote both
    (seed 105 of the differential test above found it)."""
    settings = _settings(False)
    view = store.Store.from_records({
        "/skydns/local/cluster/mx/l1": '{"host":"web.cluster.local.","mail":true}',
        "/skydns/local/cluster/web/a/svc": '{"host":"192.0.2.7"}',
        "/skydns/local/cluster/web/l1": '{"host":"x.cluster.local."}',
        "/skydns/local/cluster/web/w/x": '{"host":"ext.example.org.","ttl":5}',
        "/skydns/local/cluster/x/l1": '{"host":"10.0.0.1"}',
    })
    cached = transport.Handler(settings, view, None, stats=metrics.DnsStats())
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    data = dns.message.make_query("mx.cluster.local.", "MX", use_edns=0).to_wire()
    got, want = cached.handle(data, "udp"), reference.handle(data, "udp")
    assert got == want
    cnames = [rrset for rrset in dns.message.from_wire(got).additional if rrset.rdtype == dns.rdatatype.CNAME]
    assert len(cnames) == 1 and len(cnames[0]) == 1 and cnames[0][0].target.to_text() == "ext.example.org."
    assert cnames[0].ttl == 5
    # the wire holds one CNAME record too (dnspython's parse would hide a second one): web's A,
    # its CNAME, x's A and the OPT record
    assert int.from_bytes(got[10:12], "big") == 4


@pytest.mark.parametrize("seed", [105])
def test_differential_seed_with_two_aliases_of_one_owner(seed):
    """Seed 105 of the differential test: an MX answer whose glue gives one owner two CNAMEs."""
    for cache_bytes in BUDGETS:
        test_cached_answers_equal_fresh_answers_after_every_step(seed, False, cache_bytes)
