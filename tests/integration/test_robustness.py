"""No packet and no etcd value can stop skydns: a real ``python -m skydns`` process, a real etcd
and a fake upstream, fed garbage over UDP and TCP.

Every fuzz packet is followed by a normal query (the sentinel) that must be answered correctly;
every reply is checked against the rules of RFC 1035/6891: the ID is echoed, QR is set, a
response (QR=1) or a packet shorter than a header gets no reply, a reply never exceeds the
client's UDP size (512 without EDNS), OPT in the reply only when the query had one, FORMERR
echoes a readable question. The fuzz is deterministic (fixed seed and count). Then TCP abuse
(length 0, short data, half-closed, pipelined, slowloris, more connections than the limit),
~64 KB queries, cached answers against every EDNS shape (OPT, DO bit and size always those of
the query itself), and bad etcd values written while serving and met at the first load.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import socket
import struct
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from skydns import wire
from tests import procs, skydnsproc, upstreams

pytestmark = pytest.mark.integration

PREFIX = "it-robust"
ZONE = "cluster.local."
WEB = "web.default.svc.cluster.local."
RECORDS = {
    WEB: {"host": "10.0.0.1", "ttl": 30},
    "multi.default.svc.cluster.local./a": {"host": "10.0.0.2"},
    "multi.default.svc.cluster.local./b": {"host": "10.0.0.3"},
    "alias.default.svc.cluster.local.": {"host": WEB.rstrip(".")},
    "mid.default.svc.cluster.local.": {"text": "m" * 800},     # fits 1232, not 512
    "big.default.svc.cluster.local.": {"text": "b" * 3000},    # truncated over UDP
    "_http._tcp.web.default.svc.cluster.local.": {"host": "10.0.0.1", "port": 80},
}
NAMES = ["web.default.svc.cluster.local.", "multi.default.svc.cluster.local.", "alias.default.svc.cluster.local.",
         "mid.default.svc.cluster.local.", "big.default.svc.cluster.local.", "nope.default.svc.cluster.local.",
         "cluster.local.", "WeB.DeFaulT.svc.CLUSTER.local.", "example.com.", "version.bind."]
UDP_PACKETS = 3000
TCP_PACKETS = 600
SEED = 20261125


def key(name: str) -> str:
    owner, _, leaf = name.partition("/")
    path = "/" + PREFIX + "/" + "/".join(reversed(owner.rstrip(".").split(".")))
    return path + ("/" + leaf if leaf else "")


# -- the process -----------------------------------------------------------------------------


def start(etcd_url: str, log_path: str, *extra: str, **kw) -> skydnsproc.Skydns:
    """skydns for this module's zone and prefix, logging to log_path."""
    return skydnsproc.Skydns(etcd_url, *extra, prefix=PREFIX, domain=ZONE, log_path=log_path, timeout=3, **kw)


@pytest.fixture(scope="module")
def upstream():
    good = upstreams.Upstream("ok")
    with upstreams.Thread(good):
        yield good


@pytest.fixture(scope="module")
def server(shared_etcd, upstream, tmp_path_factory):
    for name, value in RECORDS.items():
        shared_etcd.ctl("put", key(name), json.dumps(value))
    sky = start(shared_etcd.url, str(tmp_path_factory.mktemp("robust") / "skydns.log"), "--forward-timeout=0.5",
                nameservers=f"127.0.0.1:{upstream.port}")
    try:
        sky.wait_ready()
        yield sky
    finally:
        code = sky.stop()
        assert code == 0, sky.log()


def assert_serving(server: skydnsproc.Skydns) -> None:
    """The server answers a normal query correctly over UDP and TCP."""
    assert server.alive()
    for reply in (server.udp(), server.tcp()):
        assert reply.rcode() == dns.rcode.NOERROR
        assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["10.0.0.1"]


# -- packet generators (deterministic for a given random.Random) -----------------------------


def header(id=0x4242, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:  # noqa: A002
    return struct.pack("!6H", id, flags, qd, an, ns, ar)


def wname(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"


def question(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    return wname(name) + struct.pack("!HH", qtype, qclass)


def opt(payload: int = 1232, ext: int = 0, version: int = 0, flags: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHBBHH", 41, payload, ext, version, flags, len(rdata)) + rdata


def option(code: int, body: bytes) -> bytes:
    return struct.pack("!HH", code, len(body)) + body


def gen_valid(rng: random.Random) -> bytes:
    kw: dict = {}
    r = rng.random()
    if r < 0.3:
        kw = {"use_edns": 0, "payload": rng.choice([512, 1232, 4096, 100])}
    elif r < 0.45:
        kw = {"want_dnssec": True}
    return dns.message.make_query(rng.choice(NAMES), rng.choice([1, 1, 28, 33, 16, 5, 15, 255]),
                                  id=rng.randrange(65536), **kw).to_wire()


def gen_random_bytes(rng):
    size = rng.choice([0, 1, 2, 5, 11, 12, 13, 17, 20, 30, 64, 100, 300, 511, 512, 513, 1500, 4000])
    return rng.randbytes(size)


def gen_random_after_header(rng):
    return header(flags=rng.choice([0x0100, 0x0000, 0x0120, 0x0110]), qd=rng.choice([0, 1, 1, 2]),
                  ar=rng.choice([0, 1])) + rng.randbytes(rng.randrange(80))


def gen_flipped(rng):
    data = bytearray(gen_valid(rng))
    for _ in range(rng.choice([1, 1, 2, 3])):
        data[rng.randrange(len(data))] ^= (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(data)


def gen_truncated(rng):
    data = gen_valid(rng)
    return data[:rng.randrange(len(data))]


def gen_extended(rng):
    return gen_valid(rng) + rng.randbytes(rng.randrange(1, 40))


def gen_lying_counts(rng):
    body = question(rng.choice(NAMES)) + (opt() if rng.random() < 0.5 else b"")
    return header(qd=rng.choice([0, 2, 65535, 1]), an=rng.choice([0, 1, 65535]), ns=rng.choice([0, 1]),
                  ar=rng.choice([0, 1, 2, 65535])) + body


def gen_compression(rng):
    tail = struct.pack("!HH", 1, 1)
    return header() + rng.choice([
        b"\xc0\x0c" + tail,                                       # pointer to itself
        b"\xc0" + bytes([rng.randrange(14, 256)]) + tail,        # forward pointer
        b"\xc0\x0e\xc0\x0c" + tail,                              # two pointers, a loop
        b"\x03web\xc0\x0c" + tail,                               # label, then back to the start
        b"\xc0" + bytes([rng.randrange(12)]) + tail,             # into the header
        b"\x03web\xc0\x16" + tail + b"\x07cluster\x05local\x00",  # a valid pointer chain forward
        b"\x03web" + b"\xc0\x0c" * 50 + tail,                     # a run of pointers
    ])


def gen_long_names(rng):
    tail = struct.pack("!HH", 1, 1)
    size = rng.randrange(64, 256)
    return header() + rng.choice([
        bytes([size]) + b"a" * size + b"\x00" + tail,                           # label > 63
        (b"\x3f" + b"a" * 63) * 5 + b"\x00" + tail,                             # name > 255
        (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00" + tail,       # exactly 255
        b"\x01x" * rng.randrange(100, 130) + wname(ZONE) + tail,                # many labels, in zone
    ])


def gen_bad_opt(rng):
    q = question(rng.choice(NAMES), rng.choice([1, 33, 16]))
    one = header(ar=1) + q
    return rng.choice([
        header(ar=2) + q + opt() + opt(),                                        # two OPTs
        one + b"\x01x" + opt(),                                                  # OPT not at the root
        one + opt()[:-2] + struct.pack("!H", rng.choice([1, 5, 300, 65535])),    # rdlength past the end
        one + opt(payload=65535),                                                # huge payload
        one + opt(payload=rng.choice([0, 1, 100, 511])),                         # payload < 512
        one + opt(version=1),                                                    # EDNS version 1
        one + opt(ext=rng.randrange(1, 256)),                                    # extended rcode set
        one + opt(flags=0x8000),                                                 # DO bit
        one + opt(rdata=option(65001, b"abc")),                                  # unknown option
        one + opt(rdata=struct.pack("!HH", 10, 20) + b"abc"),                    # option past rdlength
        one + opt(rdata=option(8, struct.pack("!HBB", rng.choice([1, 2, 5]), 64, 0))),  # bad ECS
        one + opt(rdata=option(10, b"c" * rng.choice([0, 3, 9, 41]))),           # bad cookie
        one + opt(rdata=option(10, b"c" * rng.choice([8, 24]))),                 # good cookie
        one + opt(rdata=option(15, b"x")),                                       # bad EDE
    ])


def gen_odd_class(rng):
    q = question(rng.choice(NAMES), rng.choice([1, 16, 255]), rng.choice([3, 4, 254, 255, 0, 2, 65535]))
    return header(ar=1) + q + opt() if rng.random() < 0.3 else header() + q


def gen_odd_type(rng):
    return header() + question(rng.choice(NAMES), rng.choice([1, 28, 5, 33, 15, 16, 12, 2, 6, 255, 252, 251,
                                                             41, 0, 65535, 99, 13, 257]))


def gen_opcode(rng):
    return header(flags=(rng.choice([1, 2, 3, 4, 5, 6, 15]) << 11) | 0x0100, qd=rng.choice([0, 1])) \
        + question(rng.choice(NAMES))


def gen_response(rng):
    data = bytearray(gen_valid(rng))
    data[2] |= 0x80
    return bytes(data)


GENERATORS = [gen_random_bytes, gen_random_after_header, gen_flipped, gen_truncated, gen_extended,
              gen_lying_counts, gen_compression, gen_long_names, gen_bad_opt, gen_odd_class, gen_odd_type,
              gen_opcode, gen_response]


def packets(seed: int, count: int) -> list[tuple[str, bytes]]:
    """count packets (kind, bytes), each with a distinct ID (1..count) when it has one."""
    rng = random.Random(seed)
    out = []
    for number in range(count):
        gen = GENERATORS[number % len(GENERATORS)]
        data = gen(rng)
        if len(data) >= 2:
            data = struct.pack("!H", number + 1) + data[2:]
        out.append((gen.__name__[4:], data))
    return out


def sentinel(number: int) -> bytes:
    return dns.message.make_query(WEB, "A", id=0x8000 | number).to_wire()


def check_sentinel(out: bytes) -> None:
    reply = dns.message.from_wire(out)
    assert reply.rcode() == dns.rcode.NOERROR, reply
    assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["10.0.0.1"], reply


# -- checking replies ------------------------------------------------------------------------


def problems_of(kind: str, data: bytes, replies: list[bytes], proto: str) -> list[str]:
    """What is wrong with replies (all replies carrying data's ID) to data; [] when all is well."""
    if len(data) < wire.HEADER_SIZE or data[2] & 0x80:
        return [f"{kind}: reply to a packet that must be dropped"] if replies else []
    if len(replies) != 1:
        return [f"{kind}: {len(replies)} replies"]
    try:
        query = dns.message.from_wire(data)
    except Exception:  # noqa: BLE001 - unreadable to dnspython: FORMERR, header (+ question)
        query = None
    limit = wire.TCP_MAX
    if proto == "udp":
        limit = max(512, min(query.payload, 1232)) if query is not None and query.edns >= 0 else 512
    out = replies[0]
    found = []
    if len(out) > limit:
        found.append(f"{kind}: {len(out)}-byte reply over the {limit}-byte limit")
    if out[:2] != data[:2] or not out[2] & 0x80:
        found.append(f"{kind}: ID not echoed or QR not set")
    try:
        reply = dns.message.from_wire(out)
    except Exception as exc:  # noqa: BLE001
        return found + [f"{kind}: unreadable reply ({exc})"]
    if reply.opcode() != (data[2] >> 3) & 0x0F:
        found.append(f"{kind}: opcode not echoed")
    rcode = reply.rcode()
    readable = wire.question_end(data) is not None and not data[2] & 0x78  # a QUERY with one question
    if rcode == dns.rcode.FORMERR and readable and len(reply.question) != 1:
        found.append(f"{kind}: FORMERR without the readable question")
    if query is not None:
        if query.edns < 0 and reply.edns >= 0:
            found.append(f"{kind}: OPT in the reply to a query without one")
        if query.edns >= 0 and reply.edns < 0 and rcode not in (dns.rcode.FORMERR, dns.rcode.SERVFAIL):
            found.append(f"{kind}: no OPT in the {dns.rcode.to_text(rcode)} reply to a query with one")
        if reply.question and query.question:
            asked, got = query.question[0], reply.question[0]
            if (got.name.to_wire(), got.rdtype, got.rdclass) != (asked.name.to_wire(), asked.rdtype, asked.rdclass):
                found.append(f"{kind}: question not echoed exactly")
    return found


def fuzz_udp(server: skydnsproc.Skydns, sent: list[tuple[str, bytes]]) -> dict[int, list[bytes]]:
    """Send each packet then a sentinel; returns the replies by ID (late forwarded ones too)."""
    by_id: dict[int, list[bytes]] = collections.defaultdict(list)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", server.port))
        sock.settimeout(3)
        for number, (_, data) in enumerate(sent):
            sock.send(data)  # an empty datagram too: UDP carries it
            check = sentinel(number % 0x7FFF)
            sock.send(check)
            while True:
                out = sock.recv(65535)
                if out[:2] == check[:2]:
                    check_sentinel(out)
                    break
                by_id[struct.unpack("!H", out[:2])[0]].append(out)
        # forwarded answers come back later: wait until every expected reply is in
        expected = {struct.unpack("!H", d[:2])[0] for _, d in sent if len(d) >= 12 and not d[2] & 0x80}

        def drained():
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError, socket.timeout):
                while True:
                    out = sock.recv(65535)
                    by_id[struct.unpack("!H", out[:2])[0]].append(out)
            return expected <= set(by_id)
        with contextlib.suppress(TimeoutError):
            procs.wait_until(drained, timeout=5, what="late replies")
    return by_id


def read_tcp(sock: socket.socket) -> bytes:
    head = sock.recv(2, socket.MSG_WAITALL)
    assert len(head) == 2, "connection closed"
    (length,) = struct.unpack("!H", head)
    data = sock.recv(length, socket.MSG_WAITALL)
    assert len(data) == length
    return data


# -- the tests -------------------------------------------------------------------------------


def test_udp_fuzz_keeps_answering_and_every_reply_is_sane(server):
    sent = packets(SEED, UDP_PACKETS)
    counters = {
        "short": ("skydns_dns_dropped_total", {"reason": "short"}),
        "response": ("skydns_dns_dropped_total", {"reason": "response"}),
        "formerr": ("skydns_dns_responses_total", {"rcode": "FORMERR"}),
        "panics": ("skydns_panics_total", {}),
    }
    before = {what: server.metric(name, **labels) for what, (name, labels) in counters.items()}
    log_lines = len(server.log().splitlines())
    by_id = fuzz_udp(server, sent)
    problems = []
    rcodes: collections.Counter = collections.Counter()
    for kind, data in sent:
        replies = by_id.get(struct.unpack("!H", data[:2])[0], []) if len(data) >= 2 else []
        problems += problems_of(kind, data, replies, "udp")
        if replies:
            rcodes[wire.rcode(replies[0])] += 1
    assert not problems, collections.Counter(problems).most_common(10)
    assert_serving(server)
    # every kind of packet was sent, and the garbage was answered FORMERR
    assert rcodes[dns.rcode.FORMERR] > UDP_PACKETS // 4
    short = sum(1 for _, d in sent if len(d) < 12)
    responses = sum(1 for _, d in sent if len(d) >= 12 and d[2] & 0x80)
    delta = {what: server.metric(name, **labels) - before[what] for what, (name, labels) in counters.items()}
    assert delta == {"short": short, "response": responses, "formerr": rcodes[dns.rcode.FORMERR], "panics": 0}
    # counted, not logged: thousands of bad packets add no more than a few log lines
    assert "Traceback" not in server.log()
    assert len(server.log().splitlines()) - log_lines < 10, server.log()


def test_tcp_fuzz_pipelined_keeps_answering(server):
    sent = packets(SEED + 1, TCP_PACKETS)
    problems = []
    for start in range(0, len(sent), 100):  # 100 packets per connection, each with a sentinel
        batch = sent[start:start + 100]
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            stream = b"".join(struct.pack("!H", len(d)) + d + struct.pack("!H", len(s)) + s
                              for (_, d), s in zip(batch, (sentinel(n) for n in range(len(batch)))))
            sender = threading.Thread(target=sock.sendall, args=(stream,))
            sender.start()
            try:
                for number, (kind, data) in enumerate(batch):
                    replies = []
                    while True:
                        out = read_tcp(sock)
                        if out[:2] == sentinel(number)[:2]:
                            check_sentinel(out)
                            break
                        replies.append(out)
                    problems += problems_of(kind, data, replies, "tcp")
            finally:
                sender.join(10)
    assert not problems, collections.Counter(problems).most_common(10)
    assert_serving(server)
    assert "Traceback" not in server.log()


def tcp_zero_length(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(b"\x00\x00")
        query = dns.message.make_query(WEB, "A", id=7).to_wire()
        sock.sendall(struct.pack("!H", len(query)) + query)
        assert read_tcp(sock)[:2] == b"\x00\x07"


def tcp_length_beyond_data_then_close(server):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
            sock.sendall(b"\x01\x00" + dns.message.make_query(WEB, "A").to_wire())


def tcp_half_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        query = dns.message.make_query(WEB, "A", id=9).to_wire()
        sock.sendall((struct.pack("!H", len(query)) + query) * 3)
        sock.shutdown(socket.SHUT_WR)
        assert [read_tcp(sock)[:2] for _ in range(3)] == [b"\x00\x09"] * 3
        assert sock.recv(1) == b""  # then the server closes its side


def tcp_pipelined(server):
    queries = [dns.message.make_query(name, "A", id=n + 1).to_wire() for n, name in enumerate(NAMES * 5)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(q)) + q for q in queries))
        assert [read_tcp(sock)[:2] for _ in queries] == [q[:2] for q in queries]


def tcp_slowloris(server):
    query = dns.message.make_query(WEB, "A", id=11).to_wire()
    stream = struct.pack("!H", len(query)) + query
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
    try:
        for index in range(15):  # 1 byte per 100 ms on each: the others are served meanwhile
            for sock in slow:
                sock.sendall(stream[index:index + 1])
            if index % 5 == 0:
                assert_serving(server)
            time.sleep(0.1)
        for sock in slow:
            sock.sendall(stream[15:])
            assert read_tcp(sock)[:2] == b"\x00\x0b"
    finally:
        for sock in slow:
            sock.close()


def tcp_too_many_connections(server):
    held = []
    try:
        for _ in range(1010):  # the default limit is 1000 connections
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        procs.wait_until(lambda: server.metric("skydns_dns_dropped_total", reason="tcp_evicted") > 0,
                         what="the least recently active connections closed for new ones")
        assert server.udp().answer  # UDP unaffected
        assert server.tcp().answer  # a fresh TCP query takes the slot of the oldest idle one
    finally:
        for sock in held:
            sock.close()
    procs.wait_until(lambda: server.tcp().answer, what="TCP served again")


TCP_CASES = [
    ("length 0", tcp_zero_length),
    ("length beyond the data then close", tcp_length_beyond_data_then_close),
    ("half-closed", tcp_half_closed),
    ("pipelined", tcp_pipelined),
    ("slowloris", tcp_slowloris),
    ("more connections than the limit", tcp_too_many_connections),
]


@pytest.mark.parametrize("case", [c[1] for c in TCP_CASES], ids=[c[0] for c in TCP_CASES])
def test_tcp_abuse_never_stops_the_server(server, case):
    case(server)
    assert_serving(server)


HUGE = [
    # (id, packet of about 64 KB, rcode or None for "no reply")
    ("query with 64 KB of EDNS padding", header(ar=1) + question(WEB) + opt(rdata=option(12, b"\x00" * 65000)),
     dns.rcode.NOERROR),
    ("64 KB of garbage", header() + bytes(range(256)) * 254, dns.rcode.FORMERR),
    ("64 KB response", header(flags=0x8100) + bytes(65000), None),
]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize(("data", "rcode"), [r[1:] for r in HUGE], ids=[r[0] for r in HUGE])
def test_huge_queries(server, proto, data, rcode):
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3 if rcode is not None else 0.3)
            sock.sendto(data, ("127.0.0.1", server.port))
            try:
                out = sock.recv(65535)
            except (TimeoutError, socket.timeout):
                out = None
    else:
        with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
            sock.sendall(struct.pack("!H", len(data)) + data)
            sock.shutdown(socket.SHUT_WR)
            out = read_tcp(sock) if rcode is not None else (sock.recv(1) or None)
    if rcode is None:
        assert out is None
    else:
        assert not problems_of("huge", data, [out], proto)
        assert wire.rcode(out) == rcode
    assert_serving(server)


# The same name asked in every EDNS shape, each twice (a miss, then a cache hit), in an order
# where each shape follows a different one: a reply must fit the shape of its own query.
VARIANTS = [
    ("no EDNS", {}),
    ("EDNS 1232", {"use_edns": 0, "payload": 1232}),
    ("EDNS 512", {"use_edns": 0, "payload": 512}),
    ("EDNS 4096 DO", {"use_edns": 0, "payload": 4096, "want_dnssec": True}),
    ("EDNS 100", {"use_edns": 0, "payload": 100}),
    ("EDNS cookie", {"use_edns": 0, "options": [dns.edns.GenericOption(10, b"12345678")]}),
    ("EDNS ECS", {"use_edns": 0, "options": [dns.edns.ECSOption("10.1.0.0", 16)]}),
    ("no EDNS again", {}),
]
CACHE_NAMES = [
    ("in zone", WEB, "A"),
    ("round robin", "multi.default.svc.cluster.local.", "A"),
    ("CNAME", "ALIAS.default.svc.cluster.local.", "A"),
    ("fits only with EDNS", "mid.default.svc.cluster.local.", "TXT"),
    ("too big for UDP", "big.default.svc.cluster.local.", "TXT"),
    ("NXDOMAIN", "nope.default.svc.cluster.local.", "A"),
    ("SRV", "_http._tcp.WEB.default.svc.cluster.local.", "SRV"),
    ("forwarded", "Cached.Example.COM.", "A"),
]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize(("name", "rdtype"), [c[1:] for c in CACHE_NAMES], ids=[c[0] for c in CACHE_NAMES])
def test_cached_answers_fit_each_query(server, proto, name, rdtype):
    seen: dict[str, list] = {}
    for spelling in (name, name.lower(), name.upper()):
        for label, kw in VARIANTS * 2:
            query = dns.message.make_query(spelling, rdtype, **kw)
            wire_query = query.to_wire()
            if proto == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(3)
                    sock.sendto(wire_query, ("127.0.0.1", server.port))
                    out = sock.recv(65535)
            else:
                with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
                    sock.sendall(struct.pack("!H", len(wire_query)) + wire_query)
                    out = read_tcp(sock)
            reply = dns.message.from_wire(out)
            assert not problems_of(label, wire_query, [out], proto)
            assert reply.id == query.id
            assert reply.question[0].name.to_wire() == query.question[0].name.to_wire()  # spelling kept
            assert (reply.edns >= 0) == (query.edns >= 0), label
            if reply.edns >= 0:
                assert reply.payload == 1232 and reply.edns == 0
                # the DO bit is copied from the query (RFC 3225), cache hits included
                assert reply.ednsflags & dns.flags.DO == query.ednsflags & dns.flags.DO, label
            truncated = bool(reply.flags & dns.flags.TC)
            if proto == "tcp":
                assert not truncated
            # the same query shape always gets the same answer (records sorted: round robin;
            # lower-cased: names compressed to the question take its spelling, as dnspython does)
            content = (reply.rcode(), truncated, reply.flags & dns.flags.AA,
                       sorted(rr.to_text().lower() for rrset in reply.answer for rr in rrset),
                       sorted(rr.to_text().lower() for rrset in reply.authority for rr in rrset))
            seen.setdefault(label.replace(" again", ""), []).append(content)
    for label, contents in seen.items():
        assert all(c == contents[0] for c in contents), label
    if name.startswith("mid") and proto == "udp":
        assert seen["no EDNS"][0][1] and not seen["EDNS 1232"][0][1] and seen["EDNS 512"][0][1]
    if name.startswith("big") and proto == "udp":
        assert all(contents[0][1] for contents in seen.values())


def test_malformed_option_is_formerr_even_when_the_name_is_cached(server):
    good = dns.message.make_query(WEB, "A", use_edns=0, payload=1232).to_wire()
    server.udp(WEB, "A", use_edns=0, payload=1232)  # the name is in the cache now
    bad = good[:-2] + struct.pack("!H", 7) + struct.pack("!HH", 10, 20) + b"abc"  # option past rdlength
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        for _ in range(2):
            sock.sendto(bad, ("127.0.0.1", server.port))
            reply = dns.message.from_wire(sock.recv(65535))
            assert reply.rcode() == dns.rcode.FORMERR
            assert reply.question[0].name.to_text() == WEB  # the readable question is echoed


# Bad values written while skydns runs: each is skipped (counted), the rest keeps being served.
D = "default.svc.cluster.local."
BAD_VALUES = [
    # (id, key below /<prefix>/local/cluster/, value, counted as bad, query name, type, rcode, answers)
    ("garbage JSON", "svc/default/garbage", b"{not json", True, "garbage." + D, "A", "NXDOMAIN", []),
    ("JSON array", "svc/default/array", b'[{"host":"10.0.0.9"}]', True, "array." + D, "A", "NXDOMAIN", []),
    ("JSON string", "svc/default/string", b'"10.0.0.9"', True, "string." + D, "A", "NXDOMAIN", []),
    ("not UTF-8", "svc/default/latin", b'{"host":"10.0.0.9","text":"\xff"}', True, "latin." + D, "A", "NXDOMAIN",
     []),
    ("1 MB of text", "svc/default/huge", b"x" * (1 << 20), True, "huge." + D, "A", "NXDOMAIN", []),
    ("host not a name", "svc/default/badhost", b'{"host":"10.0.0.999.."}', True, "badhost." + D, "A", "NXDOMAIN",
     []),
    ("ttl 1e400", "svc/default/inf", b'{"host":"10.0.0.9","ttl":1e400}', True, "inf." + D, "A", "NXDOMAIN", []),
    ("port NaN", "svc/default/nan", b'{"host":"10.0.0.9","port":NaN}', True, "nan." + D, "A", "NXDOMAIN", []),
    ("IPv6 zone id", "svc/default/zoneid", b'{"host":"fe80::1%eth0"}', True, "zoneid." + D, "AAAA", "NXDOMAIN",
     []),
    ("1 MB TXT record: cut to fit", "svc/default/hugetxt", json.dumps({"text": "t" * (1 << 20)}).encode(), False,
     "hugetxt." + D, "TXT", "NOERROR", ["t" * 255] * 255),
    ("space in key", "svc/default/with space", b'{"host":"10.0.0.11"}', False, "with\\032space." + D, "A",
     "NOERROR", ["10.0.0.11"]),
    ("upper-case key", "svc/default/UPPER", b'{"host":"10.0.0.12"}', False, "upper." + D, "A", "NOERROR",
     ["10.0.0.12"]),
    ("trailing slash", "svc/default/trail/", b'{"host":"10.0.0.13"}', False, "trail." + D, "A", "NOERROR",
     ["10.0.0.13"]),
    ("empty segment", "svc//default/double", b'{"host":"10.0.0.14"}', False, "double." + D, "A", "NOERROR",
     ["10.0.0.14"]),
]


def texts(reply: dns.message.Message) -> list[str]:
    out = []
    for rrset in reply.answer:
        for rr in rrset:
            if rrset.rdtype == dns.rdatatype.TXT:
                out += [s.decode() for s in rr.strings]
            else:
                out.append(rr.to_text())
    return out


def test_bad_etcd_values_are_skipped_counted_and_the_rest_served(server, shared_etcd):
    zone_path = "/" + PREFIX + "/local/cluster/"
    before = server.metric("skydns_etcd_bad_values_total")
    try:
        for row in BAD_VALUES:
            shared_etcd.ctl("put", zone_path + row[1], input=row[2])
            assert_serving(server)
        # the last put is served: every earlier one has been applied too
        procs.wait_until(lambda: server.udp("double." + D).answer, what="last put applied")
        assert server.metric("skydns_etcd_bad_values_total") - before == sum(1 for row in BAD_VALUES if row[3])
        check_bad_value_answers(server)
        # the same values met by the first full load of a new process (the list, not the watch)
        fresh = start(shared_etcd.url, server.log_path + ".fresh")
        try:
            fresh.wait_ready()
            assert fresh.metric("skydns_etcd_bad_values_total") == sum(1 for row in BAD_VALUES if row[3])
            check_bad_value_answers(fresh)
        finally:
            assert fresh.stop() == 0
    finally:
        for row in BAD_VALUES:
            shared_etcd.ctl("del", zone_path + row[1])


def check_bad_value_answers(server: skydnsproc.Skydns) -> None:
    for label, _, _, _, name, rdtype, rcode, answers in BAD_VALUES:
        for proto in ("udp", "tcp"):
            reply = server.udp(name, rdtype) if proto == "udp" else server.tcp(name, rdtype)
            assert dns.rcode.to_text(reply.rcode()) == rcode, (label, proto)
            if proto == "udp" and len(answers) > 100:
                assert reply.flags & dns.flags.TC, label  # too big for UDP: the client retries over TCP
            else:
                assert texts(reply) == answers, (label, proto)
    assert_serving(server)
    assert server.alive() and server.http("/ready")[0] == 200
    assert server.metric("skydns_panics_total") == 0
    log = server.log()
    assert "Traceback" not in log
    for row in BAD_VALUES:
        if row[3]:
            assert "/local/cluster/" + row[1] in log, row[0]  # the log names the bad key
