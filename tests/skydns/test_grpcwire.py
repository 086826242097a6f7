"""grpcwire: the client's frames, and the decoder of etcd's side of the connection.

Tables of byte streams built frame by frame (RFC 9113, RFC 7541 via the hpack encoder, gRPC's
length-prefixed messages) with what feed() must return or the ProtocolError it must raise;
then property tests: any slicing of the bytes decodes the same, messages survive any framing
(split across DATA frames, padding, interleaved control frames), and arbitrary bytes give
results or ProtocolError, never another exception.
"""

from __future__ import annotations

import struct

import hpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from skydns import grpcwire as w

OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


def headers(fields, end_stream=False, stream=1, padded=0, priority=False, encoder=None) -> bytes:
    block = (encoder or hpack.Encoder()).encode(fields)
    flags = w.END_HEADERS | (w.END_STREAM if end_stream else 0)
    if priority:
        flags |= w.PRIORITY_FLAG
        block = b"\x00\x00\x00\x03\x10" + block
    if padded:
        flags |= w.PADDED
        block = bytes([padded]) + block + b"\0" * padded
    return w.frame(w.HEADERS, flags, stream, block)


def grpc(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def data(payload: bytes, end_stream=False, stream=1, padded=None) -> bytes:
    flags = w.END_STREAM if end_stream else 0
    if padded is not None:
        flags |= w.PADDED
        payload = bytes([padded]) + payload + b"\0" * padded
    return w.frame(w.DATA, flags, stream, payload)


START = headers(OK_HEADERS)
TRAILERS_OK = headers([("grpc-status", "0")], end_stream=True)
SETTINGS_BODY = struct.pack(">HIHI", w.INITIAL_WINDOW_SIZE, 1 << 20, w.MAX_FRAME_SIZE, 16384)


def settings_frame(body=SETTINGS_BODY, flags=0, stream=0) -> bytes:
    return w.frame(w.SETTINGS_FRAME, flags, stream, body)


# -- the client side -----------------------------------------------------------------------------

def test_preface_announces_no_push_and_the_largest_windows():
    out = w.preface()
    assert out.startswith(w.PREFACE)
    got = w.Decoder()
    got._headers_seen = True  # the decoder reads frames of either side alike
    items = got.feed(out[len(w.PREFACE):])
    assert items == [(w.SETTINGS, {w.ENABLE_PUSH: 0, w.INITIAL_WINDOW_SIZE: w.MAX_WINDOW}),
                     (w.WINDOW, (0, w.MAX_WINDOW - w.DEFAULT_WINDOW))]


def test_request_headers_open_stream_1():
    out = w.request_headers("127.0.0.1:2379", "/etcdserverpb.Watch/Watch", "http")
    assert out[3] == w.HEADERS and out[4] == w.END_HEADERS and out[5:9] == b"\0\0\0\x01"
    fields = dict(hpack.Decoder().decode(out[9:]))
    assert fields == {":method": "POST", ":scheme": "http", ":path": "/etcdserverpb.Watch/Watch",
                      ":authority": "127.0.0.1:2379", "content-type": "application/grpc",
                      "te": "trailers", "user-agent": "kube-skydns"}


def test_message_is_one_uncompressed_grpc_message_in_one_data_frame():
    out = w.message(b"abc")
    assert out == b"\x00\x00\x08\x00\x00\x00\x00\x00\x01" + b"\x00\x00\x00\x00\x03abc"


def test_acks():
    assert w.settings_ack() == b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
    assert w.ping_ack(b"12345678") == b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + b"12345678"


# -- the decoder: tables -------------------------------------------------------------------------

GOOD = [
    ("one message", START + data(grpc(b"hello")), [(w.MESSAGE, b"hello")], 10),
    ("empty message", START + data(grpc(b"")), [(w.MESSAGE, b"")], 5),
    ("two messages in one frame", START + data(grpc(b"a") + grpc(b"bc")),
     [(w.MESSAGE, b"a"), (w.MESSAGE, b"bc")], 13),
    ("a message across frames", START + data(grpc(b"hello")[:3]) + data(grpc(b"hello")[3:]),
     [(w.MESSAGE, b"hello")], 10),
    ("padded data", START + data(grpc(b"xy"), padded=4), [(w.MESSAGE, b"xy")], 7 + 5),
    ("padded, prioritised headers", headers(OK_HEADERS, padded=3, priority=True) + data(grpc(b"z")),
     [(w.MESSAGE, b"z")], 6),
    ("settings", settings_frame(), [(w.SETTINGS, {w.INITIAL_WINDOW_SIZE: 1 << 20, w.MAX_FRAME_SIZE: 16384})], 0),
    ("settings ack is silent", settings_frame(b"", flags=w.ACK), [], 0),
    ("ping", w.frame(w.PING_FRAME, 0, 0, b"abcdefgh"), [(w.PING, b"abcdefgh")], 0),
    ("ping ack is silent", w.frame(w.PING_FRAME, w.ACK, 0, b"abcdefgh"), [], 0),
    ("window update", w.window_update(0, 1000) + w.window_update(1, 7), [(w.WINDOW, (0, 1000)), (w.WINDOW, (1, 7))], 0),
    ("priority and unknown frames are skipped",
     w.frame(w.PRIORITY, 0, 1, b"\0\0\0\0\x10") + w.frame(0x42, 0xFF, 9, b"whatever"), [], 0),
    ("trailers end the call", START + data(grpc(b"a")) + TRAILERS_OK,
     [(w.MESSAGE, b"a"), (w.END, "call ended by etcd (grpc-status 0)")], 6),
    ("trailers with a message", START + headers([("grpc-status", "14"), ("grpc-message", "etcdserver:%20no%20leader")],
                                                end_stream=True),
     [(w.END, "call ended by etcd (grpc-status 14: etcdserver: no leader)")], 0),
    ("trailers-only answer", headers(OK_HEADERS + [("grpc-status", "7"), ("grpc-message", "denied")], end_stream=True),
     [(w.END, "call ended by etcd (grpc-status 7: denied)")], 0),
    ("headers in CONTINUATION", (lambda b: w.frame(w.HEADERS, 0, 1, b[:5]) + w.frame(w.CONTINUATION, 0, 1, b[5:9])
                                 + w.frame(w.CONTINUATION, w.END_HEADERS, 1, b[9:]))(hpack.Encoder().encode(OK_HEADERS))
     + data(grpc(b"q")), [(w.MESSAGE, b"q")], 6),
    ("data with END_STREAM", START + data(grpc(b"a"), end_stream=True),
     [(w.MESSAGE, b"a"), (w.END, "stream ended without trailers")], 6),
    ("reset", START + w.frame(w.RST_STREAM, 0, 1, (8).to_bytes(4, "big")), [(w.END, "stream reset by etcd (CANCEL)")], 0),
    ("reset of another stream is ignored", START + w.frame(w.RST_STREAM, 0, 3, b"\0\0\0\x08"), [], 0),
    ("goaway", w.frame(w.GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\x0b" + b"too_many_pings"),
     [(w.END, "connection closed by etcd (GOAWAY ENHANCE_YOUR_CALM: too_many_pings)")], 0),
    ("nothing after the end", START + TRAILERS_OK + data(grpc(b"late")) + b"garbage",
     [(w.END, "call ended by etcd (grpc-status 0)")], 0),
    ("a partial frame waits", START + data(grpc(b"hello"))[:-1], [], 0),
]


@pytest.mark.parametrize(("stream", "want", "consumed"), [(s, g, c) for _, s, g, c in GOOD], ids=[i for i, *_ in GOOD])
def test_decode(stream, want, consumed):
    decoder = w.Decoder()
    assert decoder.feed(stream) == want
    assert decoder.consumed == consumed


BAD = [
    ("frame too large", START + w.frame(w.DATA, 0, 1, b"\0" * (w.MAX_FRAME + 1)), "more than the 16384"),
    ("data before headers", data(grpc(b"a")), "DATA before the response headers"),
    ("data on stream 3", START + data(grpc(b"a"), stream=3), "DATA on stream 3"),
    ("headers on stream 0", headers(OK_HEADERS, stream=0), "HEADERS on stream 0"),
    ("status 503", headers([(":status", "503"), ("content-type", "text/plain")]), "HTTP status 503"),
    ("no status", headers([("content-type", "application/grpc")]), "HTTP status missing"),
    ("not grpc", headers([(":status", "200"), ("content-type", "text/html")]), "content-type 'text/html'"),
    ("compressed message", START + data(b"\x01\0\0\0\x01z"), "compressed"),
    ("padding too long", START + w.frame(w.DATA, w.PADDED, 1, b"\x05abc"), "padding of 5 bytes"),
    ("padded without a length", START + w.frame(w.DATA, w.PADDED, 1, b""), "without a pad length"),
    ("interrupted header block", w.frame(w.HEADERS, 0, 1, b"\x88") + w.frame(w.PING_FRAME, 0, 0, b"12345678"),
     "interrupted"),
    ("continuation without headers", w.frame(w.CONTINUATION, w.END_HEADERS, 1, b"\x88"), "CONTINUATION without"),
    ("settings on a stream", settings_frame(stream=1), "SETTINGS on a stream"),
    ("settings of 5 bytes", settings_frame(b"\0\x04\0\0\0"), "not a multiple of 6"),
    ("settings ack with payload", settings_frame(SETTINGS_BODY, flags=w.ACK), "acknowledgement with a payload"),
    ("window too large", settings_frame(struct.pack(">HI", w.INITIAL_WINDOW_SIZE, 2**31)), "INITIAL_WINDOW_SIZE"),
    ("ping of 4 bytes", w.frame(w.PING_FRAME, 0, 0, b"1234"), "PING must be 8 bytes"),
    ("window update of 0", w.window_update(1, 0), "WINDOW_UPDATE of 0"),
    ("window update of 3 bytes", w.frame(w.WINDOW_UPDATE, 0, 1, b"\0\0\x01"), "WINDOW_UPDATE of 3 bytes"),
    ("reset of stream 0", w.frame(w.RST_STREAM, 0, 0, b"\0\0\0\0"), "RST_STREAM must be"),
    ("short goaway", w.frame(w.GOAWAY, 0, 0, b"\0\0\0\0"), "GOAWAY must be"),
    ("push promise", START + w.frame(w.PUSH_PROMISE, w.END_HEADERS, 1, b"\0\0\0\x02\x88"), "PUSH_PROMISE"),
    ("bad hpack", w.frame(w.HEADERS, w.END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff"), "HPACK"),
    ("headers twice without end", START + START, "second header block"),
]


@pytest.mark.parametrize(("stream", "message"), [(s, m) for _, s, m in BAD], ids=[i for i, *_ in BAD])
def test_decode_rejects(stream, message):
    with pytest.raises(w.ProtocolError, match=message):
        w.Decoder().feed(stream)


def test_the_hpack_table_lives_across_header_blocks():
    encoder = hpack.Encoder()  # indexes what it sent: the trailers refer to the first block
    stream = (headers(OK_HEADERS + [("x-etcd", "v")], encoder=encoder)
              + headers([("x-etcd", "v"), ("grpc-status", "0")], end_stream=True, encoder=encoder))
    assert w.Decoder().feed(stream) == [(w.END, "call ended by etcd (grpc-status 0)")]


# -- the decoder: properties -----------------------------------------------------------------------

messages = st.lists(st.binary(max_size=300), max_size=8)


@st.composite
def framed(draw):
    """(bytes of a server's side of a call, the messages it carries): the messages' gRPC bytes
    cut at random places into DATA frames, some padded, control frames in between."""
    msgs = draw(messages)
    body = b"".join(grpc(m) for m in msgs)
    out = [START]
    at = 0
    while at < len(body):
        size = draw(st.integers(1, max(1, min(len(body) - at, 600))))
        pad = draw(st.one_of(st.none(), st.integers(0, 20)))
        out.append(data(body[at:at + size], padded=pad))
        at += size
        extra = draw(st.sampled_from(["", "ping", "window", "settings", "unknown"]))
        out.append({"": b"", "ping": w.frame(w.PING_FRAME, 0, 0, b"pingpong"),
                    "window": w.window_update(0, 5), "settings": settings_frame(),
                    "unknown": w.frame(0x33, 0, 5, b"x")}[extra])
    out.append(TRAILERS_OK)
    return b"".join(out), msgs


def cuts(stream: bytes, draw_points: list[int]) -> list[bytes]:
    points = sorted({p % (len(stream) + 1) for p in draw_points})
    pieces, last = [], 0
    for p in points + [len(stream)]:
        pieces.append(stream[last:p])
        last = p
    return pieces


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(framed(), st.lists(st.integers(0, 10**6), max_size=20))
def test_messages_survive_any_framing_and_any_slicing(case, points):
    stream, msgs = case
    decoder = w.Decoder()
    got = []
    for piece in cuts(stream, points):
        got += decoder.feed(piece)
    assert [v for k, v in got if k == w.MESSAGE] == msgs
    assert got[-1] == (w.END, "call ended by etcd (grpc-status 0)")
    whole = w.Decoder()
    assert whole.feed(stream) == got
    assert whole.consumed == decoder.consumed


@settings(max_examples=500)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_any_bytes_give_items_or_a_protocol_error(junk, points, after_headers):
    decoder = w.Decoder()
    try:
        if after_headers:
            decoder.feed(START)
        for piece in cuts(junk, points):
            for kind, _ in decoder.feed(piece):
                assert kind in (w.MESSAGE, w.SETTINGS, w.PING, w.WINDOW, w.END)
    except w.ProtocolError:
        pass


@settings(max_examples=300)
@given(framed(), st.integers(0, 10**6), st.binary(min_size=1, max_size=40))
def test_corrupted_streams_give_items_or_a_protocol_error(case, where, garbage):
    stream, _ = case
    at = where % len(stream)
    corrupted = stream[:at] + garbage + stream[at + len(garbage):]
    try:
        w.Decoder().feed(corrupted)
    except w.ProtocolError:
        pass


# -- one call after another on one connection (rules 1 and 4) ------------------------------------

def test_a_unary_request_ends_its_stream_and_names_it():
    assert w.message(b"abc", stream=3, end_stream=True) == (b"\x00\x00\x08\x00\x01\x00\x00\x00\x03"
                                                            + b"\x00\x00\x00\x00\x03abc")
    out = w.request_headers("etcd:2379", "/etcdserverpb.KV/Range", "https", stream=5)
    assert out[3] == w.HEADERS and out[5:9] == b"\0\0\0\x05"


def test_calls_follow_each_other_on_odd_streams():
    decoder = w.Decoder()
    first = START + data(grpc(b"one")) + TRAILERS_OK
    second = headers(OK_HEADERS, stream=3) + data(grpc(b"two"), stream=3) + headers(
        [("grpc-status", "11"), ("grpc-message", "compacted")], end_stream=True, stream=3)
    # The second call's bytes arrive with the first's trailers: kept until next_call().
    assert decoder.feed(first + second[:7]) == [(w.MESSAGE, b"one"), (w.END, "call ended by etcd (grpc-status 0)")]
    assert (decoder.status, decoder.reusable) == ("0", True)
    assert decoder.feed(second[7:]) == []  # still nothing for the ended call
    assert decoder.next_call() == 3 and decoder.status is None
    assert decoder.pending() == [(w.MESSAGE, b"two"), (w.END, "call ended by etcd (grpc-status 11: compacted)")]
    assert decoder.status == "11" and decoder.next_call() == 5
    with pytest.raises(w.ProtocolError, match="DATA on stream 3"):
        decoder.feed(data(grpc(b"late"), stream=3))


@pytest.mark.parametrize("end", [
    START + w.frame(w.RST_STREAM, 0, 1, (8).to_bytes(4, "big")),
    w.frame(w.GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\x00"),
    START + data(grpc(b"a"), end_stream=True),
    START,
], ids=["reset", "goaway", "no trailers", "not over"])
def test_only_trailers_let_the_next_call_start(end):
    decoder = w.Decoder()
    decoder.feed(end)
    assert not decoder.reusable
    with pytest.raises(w.ProtocolError, match="not over by its trailers"):
        decoder.next_call()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, st.sampled_from(["0", "11", "14"])), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**6), max_size=20))
def test_sequential_calls_survive_any_slicing(calls, points):
    """Each call's messages and status, however the connection's bytes are cut."""
    wire = b""
    encoder = hpack.Encoder()
    for n, (msgs, status) in enumerate(calls):
        stream = 1 + 2 * n
        wire += headers(OK_HEADERS, stream=stream, encoder=encoder)
        wire += b"".join(data(grpc(m), stream=stream) for m in msgs)
        wire += headers([("grpc-status", status)], end_stream=True, stream=stream, encoder=encoder)
    decoder = w.Decoder()
    got: list[tuple[list[bytes], str | None]] = []
    items: list = []
    for piece in cuts(wire, points):
        items += decoder.feed(piece)
        while decoder.ended and len(got) < len(calls):
            got.append(([v for k, v in items if k == w.MESSAGE], decoder.status))
            items = []
            if len(got) < len(calls):
                decoder.next_call()
                items += decoder.pending()
    assert got == [(msgs, status) for msgs, status in calls]
