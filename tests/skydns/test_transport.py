"""transport: the UDP/TCP edges on 127.0.0.1 with real sockets and real dnspython clients.

The answering function here is a small stand-in (a dict of names), so these tests check only
the edge: cache, patching, truncation, framing, malformed packets, forwarding hand-off.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from skydns import answering, httpserver, metrics, msg, settings as settings_mod, store, transport, udpbatch, wire
from tests import procs

ZONE = dns.name.from_text("cluster.local.")


Reply = answering.Reply
Forward = answering.Forward
Resolve = answering.Resolve


class View:
    """Stand-in for store.Store: name -> list of A addresses (or ("CNAME", target))."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.generation = 1
        self.calls = 0

    def set(self, name: str, addrs: list[str] | None) -> None:
        if addrs is None:
            self.records.pop(name, None)
        else:
            self.records[name] = addrs
        self.generation += 1


def answer(query: dns.message.Message, view: View, settings: settings_mod.Settings):
    view.calls += 1
    if len(query.question) != 1:
        r = dns.message.make_response(query)
        r.set_rcode(dns.rcode.FORMERR)
        return Reply(r, cacheable=False)
    q = query.question[0]
    if not q.name.is_subdomain(ZONE):
        return Forward(query)
    r = dns.message.make_response(query, our_payload=settings.edns_payload)
    r.flags |= dns.flags.AA
    key = q.name.to_text().lower()
    if key == "boom.cluster.local.":
        raise RuntimeError("stand-in bug")
    if key not in view.records:
        r.set_rcode(dns.rcode.NXDOMAIN)
        return Reply(r)
    values = view.records[key]
    if values and values[0] == "CNAME":
        r.answer.append(dns.rrset.from_text(q.name, 30, "IN", "CNAME", values[1]))
        return Resolve(r, values[1], q.rdtype)
    if q.rdtype == dns.rdatatype.A and values:
        r.answer.append(dns.rrset.from_text_list(q.name, 30, "IN", "A", values))
        r.additional.append(dns.rrset.from_text("extra.cluster.local.", 30, "IN", "TXT", "x" * 200))
    return Reply(r)


class Upstream:
    """Stand-in forwarder: answers every forwarded name with 192.0.2.1."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def forward(self, query, proto="udp"):
        self.seen.append(query.question[0].name.to_text())
        r = dns.message.make_response(query, recursion_available=True)
        r.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        return r

    async def lookup(self, name, rdtype):
        return [dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.2")]


MANY = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)]


class Running:
    """A transport.Server on host (127.0.0.1), port 0, in an event loop thread."""

    def __init__(self, view: View, forwarder=None, cache_size: int = transport.CACHE_SIZE, *,
                 max_connections: int = 4, idle_timeout: float = 2.0, new_loop=asyncio.new_event_loop,
                 host: str = "127.0.0.1", udp_batch: int = udpbatch.SIZE, compiled_hits: bool = True,
                 answer_fn=answer, **overrides) -> None:
        self.settings = settings_mod.Settings(domains=("cluster.local.",), **overrides)
        self.stats = metrics.DnsStats()
        self.view = view
        self.handler = transport.Handler(self.settings, view, forwarder, answer=answer_fn,
                                         stats=self.stats, cache_size=cache_size)
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        udp, tcp = transport.bind(host, 0)
        self.server = transport.Server(self.handler, udp, tcp, idle_timeout=idle_timeout,
                                       max_connections=max_connections, udp_batch=udp_batch,
                                       compiled_hits=compiled_hits)
        self.call(self.server.start())
        self.host, self.port = self.server.address

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def udp(self, name="web.cluster.local.", rdtype="A", **kw) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype, **kw), self.host, port=self.port, timeout=3)

    def tcp(self, name="web.cluster.local.", rdtype="A", **kw) -> dns.message.Message:
        return dns.query.tcp(dns.message.make_query(name, rdtype, **kw), self.host, port=self.port, timeout=3)

    def raw_udp(self, data: bytes, timeout: float = 0.3) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, (self.host, self.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None


@pytest.fixture
def server():
    running = Running(View({"web.cluster.local.": ["10.0.0.1"], "many.cluster.local.": MANY,
                            "two.cluster.local.": ["10.0.0.1", "10.0.0.2"],
                            "alias.cluster.local.": ["CNAME", "www.example.org."]}),
                      forwarder=Upstream())
    yield running
    running.close()


def addrs(reply: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def test_udp_and_tcp_answer(server):
    for ask in (server.udp, server.tcp):
        reply = ask()
        assert reply.rcode() == dns.rcode.NOERROR
        assert addrs(reply) == ["10.0.0.1"]
        assert reply.flags & dns.flags.AA


def test_cache_hit_patches_id_and_case(server):
    server.udp("web.cluster.local.")
    calls = server.view.calls
    q = dns.message.make_query("WeB.ClUsTeR.LoCaL.", "A")
    reply = dns.query.udp(q, server.host, port=server.port, timeout=3)
    assert server.view.calls == calls  # served from the cache
    assert reply.id == q.id
    assert reply.question[0].name.to_text() == "WeB.ClUsTeR.LoCaL."
    assert reply.answer[0].name.to_text() == "WeB.ClUsTeR.LoCaL."
    assert server.stats.cache_hits == {"answers": 1}


def test_store_change_is_served_on_the_next_query(server):
    assert addrs(server.udp()) == ["10.0.0.1"]
    server.view.set("web.cluster.local.", ["10.0.0.9"])
    assert addrs(server.udp()) == ["10.0.0.9"]
    server.view.set("web.cluster.local.", None)
    assert server.udp().rcode() == dns.rcode.NXDOMAIN


def test_no_cache_still_answers():
    running = Running(View({"web.cluster.local.": ["10.0.0.1"]}), cache_size=0)
    try:
        for _ in range(3):
            assert addrs(running.udp()) == ["10.0.0.1"]
        assert running.view.calls == 3
    finally:
        running.close()


TRUNCATION = [
    # id, query options, whole A records in the UDP answer (of 100: 12 + 23 question + 16 each)
    ("no EDNS: 512", dict(), 29),
    ("EDNS 512", dict(use_edns=0, payload=512), 29),
    ("EDNS 4096 capped at ours 1232", dict(use_edns=0, payload=4096), 74),
]


@pytest.mark.parametrize("kw, count", [r[1:] for r in TRUNCATION], ids=[r[0] for r in TRUNCATION])
def test_udp_truncation_sends_whole_records_with_tc(server, kw, count):
    for _ in range(2):  # miss, then the cached copy
        reply = server.udp("many.cluster.local.", **kw)
        assert reply.flags & dns.flags.TC
        assert len(reply.to_wire()) <= max(512, min(kw.get("payload", 512), 1232))
        assert len(addrs(reply)) == count
        assert set(addrs(reply)) <= set(MANY)
    full = server.tcp("many.cluster.local.")
    assert not full.flags & dns.flags.TC
    assert sorted(addrs(full)) == sorted(MANY)


def test_additional_dropped_before_tc(server):
    # one A (16 bytes) + a 200-byte TXT in additional: fits 512 only without the additional
    reply = server.udp("web.cluster.local.")
    assert not reply.flags & dns.flags.TC
    assert addrs(reply) == ["10.0.0.1"]
    big = server.udp("web.cluster.local.", use_edns=0, payload=1232)
    assert len(big.additional) == 1


DB = "db.default.svc.cluster.local."


def _lines(template: str, count: int) -> str:
    return "\n".join(template.format(i=i, hi=i // 250, lo=i % 250 + 1) for i in range(count))


def _reply(qname: str, rdtype: str, answer: str = "", authority: str = "", additional: str = "",
           edns: bool = False) -> dns.message.Message:
    """A response to qname/rdtype whose sections are zone-file lines (one RRset per owner+type)."""
    query = (dns.message.make_query(qname, rdtype, use_edns=0, payload=1232) if edns
             else dns.message.make_query(qname, rdtype))
    reply = dns.message.make_response(query, our_payload=1232)
    for section, text in ((reply.answer, answer), (reply.authority, authority), (reply.additional, additional)):
        for line in filter(None, (x.strip() for x in text.splitlines())):
            rr = dns.rrset.from_text(*line.split(None, 4))
            for rrset in section:
                if rrset.name == rr.name and rrset.rdtype == rr.rdtype:
                    rrset.union_update(rr)
                    break
            else:
                section.append(rr)
    return reply


A100 = _lines(DB + " 30 IN A 10.1.{hi}.{lo}", 100)
A200 = _lines(DB + " 30 IN A 10.1.{hi}.{lo}", 200)
AAAA200 = _lines(DB + " 30 IN AAAA fd00::{i:x}", 200)
SRV30 = _lines("_pg._tcp." + DB + " 30 IN SRV 10 3 5432 db-{i}." + DB, 30)
GLUE30 = _lines("db-{i}." + DB + " 30 IN A 10.1.{hi}.{lo}", 30)
SOA = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30"
LONG_NS = _lines("cluster.local. 30 IN NS " + "n{i}" + "x" * 60 + "." + "y" * 60 + ".example.", 10)

RENDER = [
    # id, reply, limit, TC, (answer, authority, additional) record counts.
    # Sizes: header 12, question 34 (DB), OPT 11, a compressed A 16 / AAAA 28, an SRV 53
    # (targets are never compressed), glue for db-N 21 or 22.
    ("fits: unchanged", _reply(DB, "A", _lines(DB + " 30 IN A 10.1.{hi}.{lo}", 3)), 512, False, (3, 0, 0)),
    ("NXDOMAIN with SOA fits", _reply("nope." + DB, "A", authority=SOA), 512, False, (0, 1, 0)),
    ("100 A, no EDNS: 29 whole records, as kube-dns", _reply(DB, "A", A100), 512, True, (29, 0, 0)),
    ("100 A, EDNS 1232: 73 whole records and the OPT", _reply(DB, "A", A100, edns=True), 1232, True, (73, 0, 0)),
    ("200 A over TCP: complete", _reply(DB, "A", A200), 65535, False, (200, 0, 0)),
    ("200 AAAA, no EDNS: 16 whole records", _reply(DB, "AAAA", AAAA200), 512, True, (16, 0, 0)),
    ("200 AAAA, EDNS 1232", _reply(DB, "AAAA", AAAA200, edns=True), 1232, True, (41, 0, 0)),
    ("CNAME then 100 A: the CNAME first, then what fits",
     _reply("web.default.svc.cluster.local.", "A", "web.default.svc.cluster.local. 30 IN CNAME " + DB + "\n" + A100),
     512, True, (1 + 28, 0, 0)),
    ("2 SRV + 30 glue: additional RRsets dropped, no TC",
     _reply("_pg._tcp." + DB, "SRV", _lines("_pg._tcp." + DB + " 30 IN SRV 10 50 5432 db-{i}." + DB, 2), additional=GLUE30),
     512, False, (2, 0, 16)),
    ("30 SRV + glue: additional gone, then SRV records cut",
     _reply("_pg._tcp." + DB, "SRV", SRV30, additional=GLUE30), 512, True, (8, 0, 0)),
    ("answer whole, authority cut at a record", _reply(DB, "A", "db.default.svc.cluster.local. 30 IN A 10.0.0.1",
                                                       authority=LONG_NS), 512, True, (1, 4, 0)),
]


def _records(message: dns.message.Message) -> list[list[str]]:
    return [[f"{rrset.name} {rrset.rdtype} {rd}" for rrset in section for rd in rrset]
            for section in (message.answer, message.authority, message.additional)]


@pytest.mark.parametrize("reply, limit, tc, counts", [r[1:] for r in RENDER], ids=[r[0] for r in RENDER])
def test_render_sends_whole_records_then_tc(reply, limit, tc, counts):
    before = _records(reply)
    out = transport.render(reply, limit)
    assert len(out) <= limit
    got = dns.message.from_wire(out)
    assert bool(got.flags & dns.flags.TC) is tc
    assert got.id == reply.id and got.question == reply.question
    assert (got.edns >= 0) is (reply.edns >= 0)
    sections = _records(got)
    assert tuple(len(s) for s in sections) == counts
    for kept, full in zip(sections, before):
        assert kept == full[:len(kept)]  # a prefix, in order, no record altered
    assert _records(reply) == before and bool(reply.flags & dns.flags.TC) is False  # message untouched


def test_round_robin_rotates_even_from_cache(server):
    orders = {tuple(addrs(server.udp("two.cluster.local."))) for _ in range(6)}
    assert orders == {("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")}


def test_round_robin_off_keeps_order():
    running = Running(View({"two.cluster.local.": ["10.0.0.1", "10.0.0.2"]}), round_robin=False)
    try:
        orders = {tuple(addrs(running.udp("two.cluster.local."))) for _ in range(4)}
        assert orders == {("10.0.0.1", "10.0.0.2")}
    finally:
        running.close()


def test_tcp_several_queries_per_connection(server):
    with socket.create_connection((server.host, server.port), timeout=3) as s:
        queries = [dns.message.make_query(n, "A") for n in
                   ("web.cluster.local.", "nope.cluster.local.", "WEB.cluster.local.", "outside.example.")]
        # pipelined: all written before reading any answer
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        rcodes = []
        for q in queries:
            reply = dns.query.receive_tcp(s, expiration=None)[0]
            assert q.is_response(reply)
            rcodes.append(dns.rcode.to_text(reply.rcode()))
        assert rcodes == ["NOERROR", "NXDOMAIN", "NOERROR", "NOERROR"]


def test_forward_and_resolve_go_through_the_forwarder(server):
    reply = server.udp("outside.example.")
    assert addrs(reply) == ["192.0.2.1"]
    reply = server.udp("alias.cluster.local.")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


def test_forward_without_forwarder_is_servfail_with_ra():
    running = Running(View({}))
    try:
        reply = running.udp("outside.example.")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert reply.flags & dns.flags.RA
    finally:
        running.close()


def _header(id=0x4242, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


GARBAGE = [
    ("0 bytes", b"", None),
    ("11 bytes", b"\x12" * 11, None),
    ("response QR=1", _header(flags=0x8100) + b"\x00\x00\x01\x00\x01", None),
    ("header only", _header(), dns.rcode.FORMERR),
    ("garbage", b"\x42\x42" + bytes(range(2, 200)), dns.rcode.FORMERR),
    ("compression loop", _header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("pointer forward", _header() + b"\xc0\x20\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("label past end", _header() + b"\x3fabc", dns.rcode.FORMERR),
    ("qdcount 2", _header(qd=2) + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("bad OPT", _header(ar=1) + b"\x03web\x07cluster\x05local\x00\x00\x01\x00\x01\x00\x00\x29\x10", dns.rcode.FORMERR),
    ("huge query", _header(ar=1) + b"\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\xff\xe3"
     + b"\x00" * 65507, "any"),
    ("answering raises", dns.message.make_query("boom.cluster.local.", "A", id=0x4242).to_wire(), dns.rcode.SERVFAIL),
    # dig +opcode=update: a question-shaped UPDATE (its zone section is not an SOA question)
    ("opcode update", _header(flags=0x2900) + b"\x03web\x07cluster\x05local\x00\x00\x01\x00\x01",
     dns.rcode.NOTIMP),
]


@pytest.mark.parametrize("data, rcode", [r[1:] for r in GARBAGE], ids=[r[0] for r in GARBAGE])
def test_malformed_packets_never_stop_the_server(server, data, rcode):
    for proto in ("udp", "tcp"):
        if proto == "udp" and len(data) > 65000:
            out = None  # too big for one datagram on loopback sockets; TCP carries it
        elif proto == "udp":
            out = server.raw_udp(data, timeout=0.3 if rcode is None else 3 * procs.TIMEOUT_SCALE)
            if rcode is None:
                assert out is None
            elif rcode != "any":
                assert out[:2] == data[:2]
                assert out[2] & 0x80
                assert wire.rcode(out) == rcode
        else:
            with socket.create_connection((server.host, server.port), timeout=3 * procs.TIMEOUT_SCALE) as s:
                s.sendall(struct.pack("!H", len(data)) + data)
                if rcode is not None:
                    (length,) = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))
                    out = s.recv(length, socket.MSG_WAITALL)
                    if rcode != "any":
                        assert wire.rcode(out) == rcode
        # the server keeps answering after every packet
        assert addrs(server.udp()) == ["10.0.0.1"]
        assert addrs(server.tcp()) == ["10.0.0.1"]


ERROR_REPLIES = [
    # (id, packet, rcode, question echoed)
    ("plain query", dns.message.make_query("web.cluster.local.", "A", id=7).to_wire(), dns.rcode.SERVFAIL, True),
    ("two OPTs: question still readable", _header(ar=2) + b"\x03web\x00\x00\x01\x00\x01"
     + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2, dns.rcode.FORMERR, True),
    ("compression loop", _header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR, False),
    ("qdcount 2", _header(qd=2) + b"\x00\x00\x01\x00\x01" * 2, dns.rcode.FORMERR, False),
    ("header only", _header(), dns.rcode.FORMERR, False),
    # an UPDATE whose zone section is not SOA: dnspython cannot read it, nor an echo of it
    ("UPDATE: header only", _header(flags=0x2800) + b"\x03web\x00\x00\x01\x00\x01", dns.rcode.FORMERR, False),
]


@pytest.mark.parametrize(("data", "rcode", "echoed"), [r[1:] for r in ERROR_REPLIES], ids=[r[0] for r in ERROR_REPLIES])
def test_error_reply_echoes_id_and_readable_question(data, rcode, echoed):
    out = transport.error_reply(data, rcode)
    reply = dns.message.from_wire(out)
    assert out[:2] == data[:2] and reply.flags & dns.flags.QR and reply.rcode() == rcode
    assert (len(reply.question) == 1) is echoed
    if echoed:
        assert out[12:] == data[12:wire.question_end(data)]
    assert not reply.answer and not reply.authority and not reply.additional


def test_panics_and_drops_are_counted(server):
    server.raw_udp(b"\x00" * 5)
    server.raw_udp(_header(flags=0x8100))
    server.raw_udp(dns.message.make_query("boom.cluster.local.", "A").to_wire(), timeout=3)
    assert server.stats.dropped == {"short": 1, "response": 1}
    assert server.stats.panics == 1


def test_metrics_count_requests_and_responses(server):
    server.udp()
    server.udp()
    server.tcp("nope.cluster.local.")
    s = server.stats
    assert s.requests()[("cluster.local.", "udp", "1", "A")] == 2
    assert s.requests()[("cluster.local.", "tcp", "1", "A")] == 1
    assert s.responses()[("cluster.local.", "NOERROR")] == 2
    assert s.responses()[("cluster.local.", "NXDOMAIN")] == 1
    assert s.cache_entries["answers"] == 2
    assert s.cache_bytes["answers"]() == server.handler.cache_bytes() > 0


def test_idle_tcp_connections_are_closed(server):
    conns = [socket.create_connection((server.host, server.port), timeout=3) for _ in range(4)]
    try:
        # after the idle timeout (2 s here) the open ones are closed
        for c in conns:
            c.settimeout(5)
            assert c.recv(1) == b""
    finally:
        for c in conns:
            c.close()
    assert addrs(server.tcp()) == ["10.0.0.1"]


def test_client_that_never_reads_is_dropped_after_the_idle_timeout(server):
    query = dns.message.make_query("many.cluster.local.", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((server.host, server.port))
        stuck.setblocking(False)
        pipelined = (struct.pack("!H", len(query)) + query) * 2000
        try:
            stuck.send(pipelined)  # answers pile up: the client reads none of them
        except BlockingIOError:
            pass
        procs.wait_until(lambda: server.server.connections, timeout=5, what="connection open")
        # idle_timeout is 2 s here: the blocked writer gives up and the slot is free again
        procs.wait_until(lambda: not server.server.connections, timeout=10, what="stuck connection dropped")
    assert addrs(server.tcp()) == ["10.0.0.1"]


def test_bind_in_use_is_one_line():
    udp, tcp = transport.bind("127.0.0.1", 0)
    port = udp.getsockname()[1]
    try:
        with pytest.raises(transport.ListenError) as info:
            transport.bind("127.0.0.1", port)
        assert str(info.value) == (f"cannot listen on 127.0.0.1:{port}/udp: address already in use "
                                   "(use -addr to pick another)")
    finally:
        udp.close()
        tcp.close()


def test_bind_reuseport_shares_the_port():
    first = transport.bind("127.0.0.1", 0, reuseport=True)
    port = first[0].getsockname()[1]
    second = transport.bind("127.0.0.1", port, reuseport=True)
    for s in (*first, *second):
        s.close()


class RealRunning(Running):
    """The transport with the real answering over a real store."""

    def __init__(self, view: store.Store, **overrides) -> None:
        self.settings = settings_mod.Settings(domains=("cluster.local.",), **overrides)
        self.stats = metrics.DnsStats()
        self.view = view
        self.handler = transport.Handler(self.settings, view, None, stats=self.stats)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        udp, tcp = transport.bind("127.0.0.1", 0)
        self.server = transport.Server(self.handler, udp, tcp)
        self.call(self.server.start())
        self.host, self.port = self.server.address


def test_real_answering_and_store_changes_on_the_next_query():
    view = store.Store.from_records({"web.default.svc.cluster.local.": msg.Service(host="10.0.0.1", ttl=30)})
    running = RealRunning(view)
    key = msg.name_to_key("web.default.svc.cluster.local.")
    try:
        for _ in range(2):
            assert addrs(running.udp("web.default.svc.cluster.local.")) == ["10.0.0.1"]
        # the store changes between two queries (as the watch does it): the next answer is new
        running.call(_apply(lambda: view.put(key, msg.encode(msg.Service(host="10.0.0.2")).encode(), 5)))
        assert addrs(running.udp("web.default.svc.cluster.local.")) == ["10.0.0.2"]
        running.call(_apply(lambda: view.delete(key, 6)))
        assert running.udp("web.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        assert running.tcp("web.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        # no forwarder: a name outside the zones is SERVFAIL with RA
        reply = running.udp("www.example.org.")
        assert reply.rcode() == dns.rcode.SERVFAIL and reply.flags & dns.flags.RA
    finally:
        running.close()


def test_servfail_until_the_store_is_loaded():
    view = store.Store()
    running = RealRunning(view)
    try:
        for _ in range(2):
            assert running.udp("web.default.svc.cluster.local.").rcode() == dns.rcode.SERVFAIL
        running.call(_apply(lambda: view.replace(
            [(msg.name_to_key("web.default.svc.cluster.local."), b'{"host":"10.0.0.1"}')], 2)))
        assert addrs(running.udp("web.default.svc.cluster.local.")) == ["10.0.0.1"]
    finally:
        running.close()


async def _apply(change):
    change()


def test_metrics_fold_at_scrape_time():
    stats = metrics.DnsStats()
    stats.server = "dns://127.0.0.1:53"
    stats.answered("cluster.local.", "udp", "1", 1, 0, 40, 90, 0.0003)
    stats.answered("cluster.local.", "udp", "1", 1, 3, 40, 600, 0.0001)
    stats.answered(".", "tcp", "2", 4242, 2, 30, 30, 0.5)
    stats.hit("answers")
    families = {f.name: f for f in metrics._DnsCollector(stats).collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    base = (("server", "dns://127.0.0.1:53"),)
    assert samples[("skydns_dns_requests_total", tuple(sorted(
        (*base, ("zone", "cluster.local."), ("proto", "udp"), ("family", "1"), ("type", "A")))))] == 2
    assert samples[("skydns_dns_requests_total", tuple(sorted(
        (*base, ("zone", "."), ("proto", "tcp"), ("family", "2"), ("type", "other")))))] == 1
    assert samples[("skydns_dns_responses_total", tuple(sorted(
        (*base, ("zone", "cluster.local."), ("rcode", "NXDOMAIN")))))] == 1
    size = ("skydns_dns_response_size_bytes_bucket", tuple(sorted(
        (*base, ("zone", "cluster.local."), ("proto", "udp"), ("le", "100.0")))))
    assert samples[size] == 1
    assert samples[("skydns_dns_response_size_bytes_sum", tuple(sorted(
        (*base, ("zone", "cluster.local."), ("proto", "udp")))))] == 690
    assert samples[("skydns_cache_hits_total", tuple(sorted((*base, ("cache", "answers")))))] == 1
    assert samples[("skydns_panics_total", ())] == 0


HTTP_CASES = [
    ("health", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 200, b"OK"),
    ("ready", b"GET /ready HTTP/1.1\r\n\r\n", 503, b"etcd: not loaded yet"),
    ("head", b"HEAD /health HTTP/1.1\r\n\r\n", 200, b""),
    ("metrics", b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", 200, b"skydns_panics_total"),
    ("not found", b"GET /nope HTTP/1.1\r\n\r\n", 404, b"not found"),
    ("post", b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, b"method not allowed"),
    ("garbage", b"hello\r\n\r\n", 400, b"bad request"),
]


@pytest.fixture(scope="module")
def http_server():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = httpserver.HttpServer(httpserver.bind("127.0.0.1", 0), lambda: "etcd: not loaded yet")
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    yield server.address
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.mark.parametrize("request_bytes, status, body", [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_http(http_server, request_bytes, status, body):
    with socket.create_connection(http_server, timeout=3) as s:
        s.sendall(request_bytes)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, got = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert body in got if body else got == b""


def test_http_bind_in_use_is_one_line():
    taken = httpserver.bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(httpserver.ListenError) as info:
            httpserver.bind("127.0.0.1", port)
        assert str(info.value) == (f"cannot listen on 127.0.0.1:{port}/http: address already in use "
                                   "(use --http-addr to pick another)")
    finally:
        taken.close()
