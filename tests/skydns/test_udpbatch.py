"""UDP in batches (skydns/udpbatch.py, transport rules 3f and 3g).

- ``Handler.batch_hits`` and the compiled loop (``Handler.fill_hits``, skydns/_hits.c) proved
  by difference: a seeded random sequence of store writes and batches of queries (repeated
  ones, so the exact cache answers, garbage among them), answered as the batcher does (the
  hits of a batch first, then ``handle`` for the rest), gives, datagram by datagram, the very
  bytes and metrics a twin handler gives answering one datagram at a time with ``handle`` in
  that order. Whatever the exact cache holds, the compiled loop answers a hit or leaves the
  datagram to ``handle``; it never raises.
- The batcher on real sockets: bursts from many clients over IPv4 and IPv6 get every answer,
  each to its own client with its own ID, the same as with one datagram per call; forwarded
  answers reach their client later; refused sends are held or dropped as rule 5 says.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import random
import shutil
import socket
import struct
import sysconfig
import threading

import dns.message
import dns.query
import dns.rrset
import hypothesis
import pytest
from hypothesis import strategies as st

from skydns import metrics, settings as settings_mod, store, transport, udpbatch
from tests.skydns import test_anscache_diff as diff
from tests.skydns import test_transport

needs_batching = pytest.mark.skipif(not udpbatch.available(), reason="recvmmsg/sendmmsg not available here")
needs_compiled = pytest.mark.skipif(transport._hits is None or not udpbatch.available(),
                                    reason="skydns._hits is not built here (no C compiler or Python headers)")
COMPILED = [pytest.param(False, id="python"), pytest.param(True, id="compiled", marks=needs_compiled)]


def test_the_compiled_loop_is_built_where_it_can_be():
    """setup.py builds skydns._hits wherever a C compiler and the Python headers are (the
    install script installs both); a skipped compiled test anywhere else means a broken build."""
    can = (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")) and os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if not can:
        pytest.skip("no C compiler or Python headers here")
    assert transport._hits is not None, "skydns._hits did not build: pip install -e . shows why"
    assert transport._hits.MMSGHDR == udpbatch.MMSGHDR


def _garbage(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(12)))  # shorter than a header
    if roll < 0.6:  # a response: dropped
        data = bytearray(dns.message.make_query("web.cluster.local.", "A").to_wire())
        data[2] |= 0x80
        return bytes(data)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(12, 80)))


def _batch(handler: transport.Handler, datagrams: list[bytes]) -> tuple[list, list[int], list[int]]:
    """What the batcher sends for datagrams read together (udpbatch rule 2): batch_hits's
    answers, then handle's for the rest; (each datagram's whole answer, the indexes of the
    hits, those of the others), each list of indexes in the order answered."""
    got = handler.batch_hits([d[2:] for d in datagrams], "udp")
    hits = [i for i, out in enumerate(got) if out is not None]
    misses = [i for i, out in enumerate(got) if out is None]
    answers = [_whole(datagrams[i], got[i]) if i in hits else None for i in range(len(datagrams))]
    for i in misses:
        answers[i] = handler.handle(datagrams[i], "udp")
    return answers, hits, misses


def _fill(handler: transport.Handler, datagrams: list[bytes]) -> tuple[list, list[int], list[int]]:
    """``_batch`` through the compiled loop, on the buffers of a real batcher (udpbatch rule 7):
    the hits read back from the send headers fill_hits wrote, then handle's answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        batcher = udpbatch.Batcher(sock, None, None, None, max(len(datagrams), 1))
        for i, data in enumerate(datagrams):
            batcher._slots[i * udpbatch.SLOT:i * udpbatch.SLOT + len(data)] = data
            batcher._rhdr[i].len = len(data)
        ready, misses = handler.fill_hits(batcher._slots, batcher._rhdr, batcher._shdr, len(datagrams),
                                          udpbatch.SLOT, "udp")
        answers: list = [None] * len(datagrams)
        hits = []
        for j in range(ready):
            base, size = batcher._siov[j].base, batcher._siov[j].len
            i, rest = divmod(base - batcher._slot_base, udpbatch.SLOT)
            assert rest == 0 and batcher._shdr[j].hdr.name == batcher._name_base + 32 * i
            answers[i] = ctypes.string_at(base, size)
            hits.append(i)
        assert sorted(hits + misses) == list(range(len(datagrams))) and misses == sorted(misses)
        assert hits == sorted(hits)
        for i in misses:
            answers[i] = handler.handle(datagrams[i], "udp")
        batcher.sock = socket.socket()  # the batcher closes this one, not the test's
        batcher.stop()
    return answers, hits, misses


def _whole(data: bytes, out) -> bytes:
    """A hit batch_hits gave for data, whole, as handle gives it."""
    if isinstance(out, tuple):  # (tail, at, patch)
        tail, at, patch = out
        out = tail[:at] + patch + tail[at + len(patch):]
    return data[:2] + out


def _counts(stats: metrics.DnsStats) -> tuple:
    histograms = {key: (sum(h.counts)) for key, h in stats.durations.items()}
    return (dict(stats.events), dict(stats.cache_hits), dict(stats.cache_misses), dict(stats.dropped),
            stats.panics, histograms)


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("round_robin", [False, True], ids=["exact-bytes", "round-robin"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batched_answers_equal_one_at_a_time_answers(seed, round_robin, compiled):
    rng = random.Random(seed)
    settings = diff._settings(round_robin)
    view = store.Store()
    view.replace([], 1)
    batched = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=64, cache_bytes=60_000)
    single = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=64, cache_bytes=60_000)
    revision = 1
    written: list[str] = []
    asked: list[bytes] = []
    history: list[str] = []
    fast = 0
    for step in range(400):
        if rng.random() < 0.3:
            revision += 1
            if written and rng.random() < 0.3:
                key = rng.choice(written[-8:])
                view.delete(key, revision)
                history.append(f"del {key}")
            else:
                key, value = diff._key(rng), diff._value(rng)
                view.put(key, value, revision)
                written.append(key)
                history.append(f"put {key} {value.decode(errors='replace')}")
            continue
        datagrams = []
        for _ in range(rng.randint(1, 24)):
            roll = rng.random()
            if roll < 0.05:
                datagrams.append(_garbage(rng))
            elif asked and roll < 0.75:
                # asked before, with a new ID: the exact cache may answer it
                data = rng.choice(asked[-30:])
                datagrams.append(rng.randrange(1 << 16).to_bytes(2, "big") + data[2:])
            else:
                data, _ = diff._query(rng, written)
                asked.append(data)
                datagrams.append(data)
        got, hits, misses = (_fill if compiled else _batch)(batched, datagrams)
        fast += len(hits)
        for i in hits + misses:
            want = single.handle(datagrams[i], "udp")
            assert got[i] == want, (f"seed {seed} step {step} datagram {i}: batched answer differs\n"
                                    + "\n".join(history[-20:]))
        assert _counts(batched.stats) == _counts(single.stats), f"seed {seed} step {step}: metrics differ"
    assert fast > 200  # the batch's own hit path did answer (this is not a no-op test)


def test_a_failing_hit_path_answers_servfail_and_the_rest_of_the_batch(monkeypatch):
    view = store.Store.from_records({"/skydns/local/cluster/web": '{"host":"10.0.0.1"}'})
    settings = settings_mod.Settings(domains=("cluster.local.",), no_rec=True)
    handler = transport.Handler(settings, view, None, stats=metrics.DnsStats())
    query = dns.message.make_query("web.cluster.local.", "A").to_wire()
    handler.handle(query, "udp")
    handler.handle(query, "udp")  # now an exact hit with its counters

    class Boom(dict):
        def get(self, key, default=None):
            raise RuntimeError("stand-in bug")

    monkeypatch.setitem(handler.exact, "udp", Boom())
    assert handler.batch_hits([query[2:], query[2:]], "udp") == [None, None]  # left to handle
    answers, _, _ = _batch(handler, [query, query])
    assert [dns.message.from_wire(out).rcode() for out in answers] == [2, 2]  # SERVFAIL
    assert handler.stats.panics == 2


def test_without_a_cache_every_datagram_is_handled_one_by_one():
    view = store.Store.from_records({"/skydns/local/cluster/web": '{"host":"10.0.0.1"}'})
    settings = settings_mod.Settings(domains=("cluster.local.",), no_rec=True)
    handler = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    datagrams = [dns.message.make_query(name, "A", id=7).to_wire()
                 for name in ("web.cluster.local.", "x.cluster.local.")] + [b"\x00\x01short"]
    datagrams *= 2
    assert handler.batch_hits([d[2:] for d in datagrams], "udp") == [None] * len(datagrams)
    answers, _, _ = _batch(handler, datagrams)
    assert answers == [reference.handle(d, "udp") for d in datagrams]
    assert handler.stats.cache_hits.get("answers", 0) == 0


class _Entry:
    """An exact-cache entry's stand-in with whatever attributes hypothesis gives it."""

    def __init__(self, alive, serials) -> None:
        if alive is not None:
            self.alive = alive
        if serials is not None:
            self.serials = serials


_ANY = st.one_of(st.none(), st.integers(-3, 70), st.binary(max_size=40), st.text(max_size=3), st.booleans())
_GOOD_TAILS = st.lists(st.binary(min_size=10, max_size=80), min_size=1, max_size=3)
_GOOD_SERIALS = st.one_of(st.just(()), st.tuples(st.tuples(st.integers(2, 12))))


def _hit(tails, serials, seen, hist, corrupt, junk):
    """An exact-cache value as transport keeps it (a hit), with at most one part replaced by junk."""
    value = [tails, _Entry(True, serials), seen, ("1", 0, [0, 0, 0], hist), None, 0]
    if corrupt == 1:
        value[0] = junk if junk is not None else [b"ok", 3]
    elif corrupt == 2:
        value[1] = _Entry(junk, serials)
    elif corrupt == 3:
        value[1] = _Entry(True, junk)
    elif corrupt == 4:
        value[3] = junk
    elif corrupt == 5:
        value[3] = ("1", 0, junk, hist)
    elif corrupt == 6:
        value[3] = (junk, 0, [0, 0, 0], hist)
    elif corrupt == 7:
        value = value[:5] if junk is None else value + [junk]
    elif corrupt == 8:
        value[1] = junk
    elif corrupt == 9:
        value = tuple(value)
    elif corrupt == 10:  # counts that are not numbers: answered, not counted
        value[3] = ("1", 0, [junk, 0, "x"], hist)
    elif corrupt == 11:  # a histogram that is no dict key: answered, not timed
        value[3] = ("1", 0, [0, 0, 0], [hist])
    return value


_HIT = st.builds(_hit, _GOOD_TAILS, _GOOD_SERIALS, st.integers(0, 3), st.sampled_from(["h1", "h2"]),
                 st.sampled_from([0] * 11 + list(range(1, 12))), _ANY)
_VALUE = st.integers(0, 9).flatmap(lambda k: _HIT if k < 7 else st.one_of(_ANY, st.lists(_ANY, max_size=7)))


@needs_compiled
@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(_VALUE, min_size=1, max_size=6), st.lists(st.integers(0, 7), min_size=1, max_size=12),
                  st.integers(0, 3))
def test_the_compiled_loop_answers_or_leaves_whatever_the_cache_holds(values, picks, revision):
    """Rule 1 of _hits.c: any value in the exact cache is a hit of the documented shape or a
    miss; the call never raises and writes nothing for a miss."""
    keys = [bytes([k]) * 20 for k in range(len(values))]
    exact = dict(zip(keys, values))
    datagrams = [b"\xab\xcd" + keys[p % len(keys)] if p < 6 else b"\x01" * (p - 5) for p in picks]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        batcher = udpbatch.Batcher(sock, None, None, None, len(datagrams))
        for i, data in enumerate(datagrams):
            batcher._slots[i * udpbatch.SLOT:i * udpbatch.SLOT + len(data)] = data
            batcher._rhdr[i].len = len(data)
        ready, turn, misses, timed = transport._hits.fill(
            exact, batcher._slots, batcher._rhdr, batcher._shdr, len(datagrams), udpbatch.SLOT, b"SOA!",
            revision, 0, "1", 5)
        assert turn >= 5 and sorted(misses) == misses and ready + len(misses) == len(datagrams)
        timed_hits = 0
        hypothesis.event(f"hits: {min(ready, 2)}, misses: {min(len(misses), 2)}")
        for j in range(ready):
            i, _ = divmod(batcher._siov[j].base - batcher._slot_base, udpbatch.SLOT)
            hit = exact[datagrams[i][2:]]
            tails, entry, seen, counters = hit[:4]
            answer = ctypes.string_at(batcher._siov[j].base, batcher._siov[j].len)
            assert i not in misses and answer[:2] == b"\xab\xcd"
            assert entry.alive and counters[1] == 0 and counters[0] == "1"
            timed_hits += not isinstance(counters[3], list)
            if seen == revision or not entry.serials:
                assert answer[2:] in tails
            else:  # the single answer, with the serial at its one offset
                at = entry.serials[0][0]
                assert answer[:at] + answer[at + 4:] == datagrams[i][:2] + tails[0][:at - 2] + tails[0][at + 2:]
                assert answer[at:at + 4] == b"SOA!"
        assert sum(timed.values()) == timed_hits
        for i in misses:  # untouched
            assert batcher._slots[i * udpbatch.SLOT:i * udpbatch.SLOT + len(datagrams[i])] == datagrams[i]
        batcher.sock = socket.socket()
        batcher.stop()


@needs_compiled
def test_the_compiled_loop_refuses_buffers_too_small_for_the_batch():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        batcher = udpbatch.Batcher(sock, None, None, None, 4)
        for count, serial in ((5, b"1234"), (2, b"123")):
            with pytest.raises(ValueError):
                transport._hits.fill({}, batcher._slots, batcher._rhdr, batcher._shdr, count, udpbatch.SLOT,
                                     serial, 1, 0, "1", 0)
        with pytest.raises(ValueError):
            transport._hits.serve(0, 0, sock.fileno(), 0, 1, {}, batcher._slots, batcher._rhdr, batcher._shdr, 4,
                                  udpbatch.SLOT, b"1234", 1, 0, "1", 0)
        batcher.sock = socket.socket()
        batcher.stop()


# -- the batcher on real sockets ---------------------------------------------------------------


def _server(host: str = "127.0.0.1", batch: int = udpbatch.SIZE, forwarder=None,
            compiled: bool = True) -> test_transport.Running:
    records = {"/skydns/local/cluster/web": '{"host":"10.0.0.1"}'}
    records.update({f"/skydns/local/cluster/many/x{i}": f'{{"host":"{ip}"}}' for i, ip in enumerate(test_transport.MANY)})
    running = test_transport.Running(store.Store.from_records(records), forwarder, host=host, udp_batch=batch,
                                     compiled_hits=compiled, answer_fn=None, no_rec=forwarder is None)
    if batch:
        assert running.server.compiled_hits == (compiled and transport._hits is not None)
    return running


def _burst(server: test_transport.Running, family: int, clients: int = 8, each: int = 40) -> dict:
    """Every client sends its queries at once, short packets among them, then reads; (client, id)
    -> answer."""
    socks = []
    for _ in range(clients):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((server.host, 0))
        sock.settimeout(5)
        socks.append(sock)
    names = ["web.cluster.local.", "many.cluster.local.", "nothere.cluster.local.", "WeB.cluster.local."]
    for k, sock in enumerate(socks):
        for i in range(each):
            query = dns.message.make_query(names[(k + i) % len(names)], "A", id=k * 1000 + i)
            sock.sendto(query.to_wire(), (server.host, server.port))
            if i % 7 == k % 3:  # no answer: the answers after it in the batch move up a slot
                sock.sendto(b"\x00\x01short", (server.host, server.port))
    answers = {}
    for k, sock in enumerate(socks):
        for _ in range(each):
            reply = dns.message.from_wire(sock.recv(65535))
            answers[(k, reply.id)] = (reply.question[0].name.to_text(), reply.rcode(),
                                      sorted(rd.to_text() for rrset in reply.answer for rd in rrset))
        sock.close()
    return answers


@needs_batching
@pytest.mark.parametrize("host,family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)], ids=["ipv4", "ipv6"])
def test_bursts_are_answered_to_each_client_as_one_at_a_time(host, family):
    results = []
    for batch, compiled in ((udpbatch.SIZE, True), (udpbatch.SIZE, False), (0, False)):
        server = _server(host, batch, compiled=compiled)
        try:
            assert (server.server._batcher is not None) == bool(batch)
            results.append(_burst(server, family))
            assert server.stats.cache_hits["answers"] > 200  # the repeated queries were exact hits
        finally:
            server.close()
    compiled, batched, single = results
    assert len(batched) == 8 * 40
    assert all(ident == k * 1000 + ident % 1000 for k, ident in batched)  # each answer to its own client
    assert batched == single
    assert compiled == single


@needs_batching
@pytest.mark.parametrize("compiled", COMPILED)
def test_bursts_from_a_store_carry_the_serial_of_every_write(compiled):
    """Negative answers served from the batch loop carry the mirror's revision as their SOA
    serial after every write, as a handler without a cache answers them."""
    view = store.Store.from_records({"/skydns/local/cluster/web": '{"host":"10.0.0.1"}'})
    settings = settings_mod.Settings(domains=("cluster.local.",), no_rec=True)
    handler = transport.Handler(settings, view, None, stats=metrics.DnsStats())
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    server = test_transport.Running.__new__(test_transport.Running)
    server.loop = asyncio.new_event_loop()
    server.thread = threading.Thread(target=server.loop.run_forever, daemon=True)
    server.thread.start()
    udp, tcp = transport.bind("127.0.0.1", 0)
    server.server = transport.Server(handler, udp, tcp, compiled_hits=compiled)
    server.call(server.server.start())
    queries = [dns.message.make_query(name, rdtype, id=i).to_wire()
               for i, (name, rdtype) in enumerate([("web.cluster.local.", "A"), ("web.cluster.local.", "AAAA"),
                                                   ("nope.cluster.local.", "A"), ("NoPe.cluster.local.", "TXT")] * 5)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for revision in range(10, 16):
                if revision > 10:
                    async def write(revision=revision):
                        view.put("/skydns/local/cluster/other/x", b'{"host":"10.0.0.9"}', revision)
                    server.call(write())
                for burst in range(3):  # the second and third bursts come from the exact cache
                    for k, data in enumerate(queries):
                        sock.sendto(data, server.server.address)
                        if burst == 1 and k % 3 == 1:  # no answer: the hits after it move up a slot
                            sock.sendto(b"\x00\x01short", server.server.address)
                    got = {}
                    for _ in queries:
                        answer = sock.recv(4096)
                        got[answer[:2]] = answer
                    for data in queries:
                        assert got[data[:2]] == reference.handle(data, "udp"), f"revision {revision}"
                serials = {rrset[0].serial for answer in got.values()
                           for rrset in dns.message.from_wire(answer).authority}
                assert serials == {view.revision}
        assert handler.stats.cache_hits["answers"] > 6 * 2 * len(queries) - 40
    finally:
        server.close()


@needs_batching
def test_forwarded_answers_reach_their_client_later():
    upstream = test_transport.Upstream()
    server = _server(forwarder=upstream)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(dns.message.make_query("example.org.", "A", id=7).to_wire(), (server.host, server.port))
            sock.sendto(dns.message.make_query("web.cluster.local.", "A", id=8).to_wire(), (server.host, server.port))
            replies = {}
            for _ in range(2):
                reply = dns.message.from_wire(sock.recv(65535))
                replies[reply.id] = reply
        assert replies[7].answer[0] == dns.rrset.from_text("example.org.", 60, "IN", "A", "192.0.2.1")
        assert replies[8].answer[0][0].to_text() == "10.0.0.1"
        assert upstream.seen == ["example.org."]
    finally:
        server.close()


@needs_batching
@pytest.mark.parametrize("compiled", COMPILED)
def test_a_dual_stack_socket_answers_both_families_also_later(compiled):
    server = _server("::", forwarder=test_transport.Upstream(), compiled=compiled)
    try:
        for host in ("127.0.0.1", "::1"):  # IPv4 arrives as ::ffff:127.0.0.1
            for _ in range(3):  # the third is an exact hit
                for name, want in (("web.cluster.local.", "10.0.0.1"), ("example.org.", "192.0.2.1")):
                    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=server.port, timeout=3)
                    assert reply.answer[0][0].to_text() == want, (host, name)
        assert server.stats.cache_hits["answers"] >= 2
    finally:
        server.close()


def _fake_send(results: list):
    """A sendmmsg stand-in: each call takes the next of results (a count, or -errno)."""
    calls = []

    def send(fd, pointer, count, flags):
        calls.append(count)
        result = results.pop(0) if results else count
        if result < 0:
            ctypes.set_errno(-result)
            return -1
        real = udpbatch._FUNCTIONS[1]
        return real(fd, pointer, result, flags) if result else 0

    return send, calls


@pytest.fixture(params=COMPILED)
def server(request):
    """A batched server over a store with web.cluster.local, its A query an exact hit already,
    with the compiled loop or the Python one; closed after the test."""
    view = store.Store.from_records({"/skydns/local/cluster/web": '{"host":"10.0.0.1"}'})
    running = test_transport.Running(view, None, answer_fn=None, compiled_hits=request.param, no_rec=True)
    assert running.server.compiled_hits == request.param
    for _ in range(2):  # the second answer knows its counters: an exact hit from now on
        assert running.udp().answer[0][0].to_text() == "10.0.0.1"
    yield running
    running.close()


def _fake_sendto(results: list):
    """A sendto stand-in for the compiled loop (udpbatch rule 7): each call takes the next of
    results (0: send it, or -errno); a ctypes function pointer kept with its calls."""
    calls = []
    real = udpbatch._FUNCTIONS[2]

    @ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_void_p, ctypes.c_uint32, use_errno=True)
    def sendto(fd, data, size, flags, name, namelen):
        calls.append(size)
        result = results.pop(0) if results else 0
        if result < 0:
            ctypes.set_errno(-result)
            return -1
        return real(fd, data, size, flags, name, namelen)

    return sendto, calls


def _one_batch(server: test_transport.Running, results: list, count: int,
               before=lambda: None) -> tuple[list[int], list[int]]:
    """count queries read as one batch with sendmmsg answering as results say (``_fake_send``),
    before() called first on the loop: the IDs answered, and the counts sendmmsg was called with."""
    batcher = server.server._batcher

    async def pause():
        server.loop.remove_reader(batcher.fd)
        if batcher.fill is not None:  # the compiled loop sends its hits one by one (rule 7)
            fake, calls = _fake_sendto(results)
            batcher._sendto_at = ctypes.cast(fake, ctypes.c_void_p).value
            batcher._fake = fake  # kept alive while the batcher may call it
        else:
            batcher._send, calls = _fake_send(results)
        before()
        return calls

    calls = server.call(pause())  # nothing is read until all the queries are queued
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for i in range(count):
            sock.sendto(dns.message.make_query("web.cluster.local.", "A", id=i).to_wire(), (server.host, server.port))

        async def resume():
            server.loop.add_reader(batcher.fd, batcher._readable)

        server.call(resume())
        got = []
        try:
            while True:
                got.append(dns.message.from_wire(sock.recv(512)).id)
        except socket.timeout:
            pass
    return got, calls


@needs_batching
@pytest.mark.parametrize("results,answered,dropped", [
    ([-errno.EAGAIN], 6, 0),  # all held, then sent one by one when writable
    ([2, -errno.EAGAIN], 6, 0),  # two sent, four held
    ([-errno.EINVAL], 5, 1),  # the first refused for its address, the rest sent
    ([3, -errno.EPERM], 5, 1),
    ([-errno.EINTR], 6, 0),  # tried again
], ids=["full", "partly-full", "refused-first", "refused-fourth", "interrupted"])
def test_refused_sends_are_held_or_dropped_one_by_one(results, answered, dropped, server):
    compiled = server.server._batcher.fill is not None
    if compiled:  # sendto: one answer per call, so "n sent, then refused" is n successes first
        results = [0] * results[0] + results[1:] if results[0] > 0 else list(results)
    got, calls = _one_batch(server, list(results), 6)
    assert len(set(got)) == len(got) == answered
    assert server.stats.dropped.get("udp_send_failed", 0) == dropped
    assert calls[0] == (len(dns.message.make_query("web.cluster.local.", "A").to_wire()) + 16 if compiled else 6)
    batcher = server.server._batcher
    assert not batcher._held and not batcher._writing


@needs_batching
def test_a_full_backlog_drops_what_does_not_fit(monkeypatch, server):
    monkeypatch.setattr(udpbatch, "BACKLOG", 2)
    got, _ = _one_batch(server, [-errno.EAGAIN], 5)
    assert sorted(got) == [0, 1]
    assert server.stats.dropped["udp_send_failed"] == 3


@needs_batching
def test_receive_errors_are_logged_at_most_once_per_interval(caplog, server):
    batcher = server.server._batcher
    with caplog.at_level("WARNING", logger="skydns.udpbatch"):
        for code in (errno.EAGAIN, errno.EINTR, errno.ENOMEM, errno.ENOMEM, errno.EFAULT):
            batcher._receive_error(code)
    assert [r.getMessage() for r in caplog.records] == ["UDP receive failed: ENOMEM"]
    assert server.udp().answer  # still answering


@needs_batching
def test_a_batch_that_fails_loses_its_answers_only(caplog, server):
    batcher = server.server._batcher
    compiled = batcher.fill is not None
    name = "fill" if compiled else "hits"
    working = getattr(batcher, name)

    def broken(*args):
        setattr(batcher, name, working)  # once
        raise RuntimeError("stand-in bug")

    got, _ = _one_batch(server, [], 3, before=lambda: setattr(batcher, name, broken))
    if compiled:  # it failed before reading: the next readable event answers the batch
        assert sorted(got) == [0, 1, 2]
        assert server.stats.dropped["udp_batch_failed"] == 1
        assert "answering a batch of UDP datagrams failed" in caplog.text
    else:
        assert got == []
        assert server.stats.dropped["udp_batch_failed"] == 3
        assert "answering a batch of 3 UDP datagrams failed" in caplog.text
    assert server.udp().answer[0][0].to_text() == "10.0.0.1"  # the next batch is answered


@needs_batching
def test_close_stops_reading_and_closes_the_socket():
    server = _server()
    sock = server.server.udp_sock
    server.close()
    assert sock.fileno() == -1


@hypothesis.given(st.ip_addresses(), st.integers(0, 65535), st.integers(0, (1 << 20) - 1), st.integers(0, 2**32 - 1))
def test_kernel_addresses_decode_as_the_socket_module_gives_them(address, port, flowinfo, scope):
    if address.version == 4:
        name = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + address.packed + bytes(8)
        assert udpbatch._address(name, socket.AF_INET) == (str(address), port)
    else:
        name = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, flowinfo) + address.packed
                + struct.pack("=I", scope))
        host, got_port, got_flow, got_scope = udpbatch._address(name, socket.AF_INET6)
        assert (socket.inet_pton(socket.AF_INET6, host), got_port, got_flow, got_scope) == (
            address.packed, port, flowinfo, scope)
