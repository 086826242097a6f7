"""kube2sky.h2call: unary gRPC over our own HTTP/2 connection, against a scripted server on
127.0.0.1 (the real etcd is in tests/integration/test_kube2sky.py and test_shared_topology.py,
TLS and client certificates included), and its parser against any bytes."""

from __future__ import annotations

import asyncio
import struct

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube2sky import h2call
from kube2sky.h2call import frame

# ---- the server side, written with the module's own framing (pure helpers)


def settings_frame(**values: int) -> bytes:
    ids = {"max_streams": h2call.MAX_CONCURRENT_STREAMS, "window": h2call.INITIAL_WINDOW_SIZE,
           "max_frame": h2call.MAX_FRAME_SIZE}
    return frame(h2call.SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


class Answer:
    """What the server writes for one stream."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def headers(self, stream: int, status: bytes = b"200", end: bool = False) -> bytes:
        block = self.encoder.encode([(b":status", status), (b"content-type", b"application/grpc")])
        return frame(h2call.HEADERS, h2call.END_HEADERS | (h2call.END_STREAM if end else 0), stream, block)

    def message(self, stream: int, payload: bytes, pieces: int = 1) -> bytes:
        body = b"\0" + len(payload).to_bytes(4, "big") + payload
        step = max(1, -(-len(body) // pieces))
        return b"".join(frame(h2call.DATA, 0, stream, body[i:i + step]) for i in range(0, len(body), step))

    def trailers(self, stream: int, status: int = 0, message: str = "") -> bytes:
        fields = [(b"grpc-status", str(status).encode())] + ([(b"grpc-message", message.encode())] if message else [])
        return frame(h2call.HEADERS, h2call.END_HEADERS | h2call.END_STREAM, stream, self.encoder.encode(fields))

    def ok(self, stream: int, payload: bytes) -> bytes:
        return self.headers(stream) + self.message(stream, payload) + self.trailers(stream)


class Server:
    """A scripted HTTP/2 server: ``handle(conn, stream, body)`` is called for each complete
    request (conn.write to answer); frames and requests are recorded."""

    def __init__(self, handle, first: bytes = b"", grant: bool = False) -> None:
        self.handle = handle
        self.first = first  # written right after the client's preface (e.g. SETTINGS)
        self.grant = grant  # give each DATA frame's bytes back at once (WINDOW_UPDATE)
        self.most_in_flight = 0  # the biggest DATA frame received (within the window granted)
        self.requests: list[tuple[int, dict, bytes]] = []
        self.frames: list[tuple[str, object]] = []
        self.connections = 0

    async def __aenter__(self) -> "Server":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        preface = await reader.readexactly(len(h2call.PREFACE))
        assert preface == h2call.PREFACE
        writer.write(frame(h2call.SETTINGS, 0, 0) + self.first)
        parser = h2call.Parser()
        headers: dict[int, dict] = {}
        bodies: dict[int, bytearray] = {}
        answer = Answer()
        tasks: list[asyncio.Future] = []
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for kind, value in parser.feed(data):
                    self.frames.append((kind, value))
                    if kind == "headers":
                        stream, fields, _ = value
                        headers[stream], bodies[stream] = fields, bytearray()
                    elif kind == "data":
                        stream, payload, end = value
                        bodies[stream] += payload
                        self.most_in_flight = max(self.most_in_flight, len(payload))
                        if self.grant and payload and not end:
                            size = len(payload).to_bytes(4, "big")
                            writer.write(frame(h2call.WINDOW_UPDATE, 0, 0, size)
                                         + frame(h2call.WINDOW_UPDATE, 0, stream, size))
                        if end:
                            body = bytes(bodies.pop(stream))
                            assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
                            self.requests.append((stream, headers[stream], body[5:]))
                            result = self.handle(writer, answer, stream, body[5:])
                            if asyncio.iscoroutine(result):  # answered concurrently
                                tasks.append(asyncio.ensure_future(result))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the client went, or the test ended
        finally:
            writer.close()


def echo(writer, answer, stream, body) -> None:
    writer.write(answer.ok(stream, b"re:" + body))


def run(coro):
    return asyncio.run(coro)


# ---- calls


def test_a_call_returns_the_answers_message_and_sends_grpc_headers():
    async def go():
        async with Server(echo) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            assert await channel.call("/etcdserverpb.KV/Txn", b"hello", 5) == b"re:hello"
            assert await channel.call("/etcdserverpb.KV/Txn", b"", 5) == b"re:"
            channel.close()
            return server
    server = run(go())
    assert [s for s, _, _ in server.requests] == [1, 3]
    fields = server.requests[0][1]
    assert fields[b":method"] == b"POST" and fields[b":path"] == b"/etcdserverpb.KV/Txn"
    assert fields[b":scheme"] == b"http" and fields[b"content-type"] == b"application/grpc"
    assert fields[b"te"] == b"trailers"
    assert server.connections == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_calls_share_the_connection_and_get_their_own_answers(loop):
    """Calls made at once on a new channel: the preface goes first whatever the event loop
    runs between connecting and the calls (uvloop ran a call before it once)."""
    async def handle(writer, answer, stream, body):
        await asyncio.sleep(0.05 if body == b"slow" else 0)
        writer.write(answer.headers(stream) + answer.message(stream, body * 2, pieces=3) + answer.trailers(stream))

    async def go():
        async with Server(handle) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            got = await asyncio.gather(*(channel.call("/x", body, 5) for body in (b"slow", b"a", b"b", b"c")))
            channel.close()
            return got, server.connections
    async def staggered():
        """Calls that start at every step of the connecting (the server checks that the
        preface comes first on each connection)."""
        async def later(channel, steps):
            for _ in range(steps):
                await asyncio.sleep(0)
            return await channel.call("/x", bytes([steps]), 5)

        async with Server(echo) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            got = await asyncio.gather(*(later(channel, steps) for steps in range(30)))
            channel.close()
            return got, server.connections

    runner = __import__("uvloop").run if loop == "uvloop" else run
    assert runner(go()) == ([b"slowslow", b"aa", b"bb", b"cc"], 1)
    assert runner(staggered()) == ([b"re:" + bytes([i]) for i in range(30)], 1)


@pytest.mark.parametrize("size", [0, 100, 16_379, 16_380, 70_000, 300_000])
def test_big_requests_keep_to_the_servers_windows_and_frame_size(size):
    """The server starts with a 1,000-byte stream window and grants each DATA frame back as
    it reads it (as grpc-go does): the client never has more in flight than the window and
    sends frames of at most 16 KiB (rule 2)."""
    async def handle(writer, answer, stream, body):
        writer.write(answer.ok(stream, len(body).to_bytes(4, "big")))

    async def go():
        async with Server(handle, first=settings_frame(window=1000), grant=True) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            await channel.call("/x", b"warm", 10)  # the server's SETTINGS are in (before: RFC defaults)
            result = await channel.call("/x", bytes(range(256)) * (size // 256) + b"x" * (size % 256), 10)
            channel.close()
            return result, server
    result, server = run(go())
    assert int.from_bytes(result, "big") == size
    assert all(len(v[1]) <= h2call.DEFAULT_FRAME for k, v in server.frames if k == "data")
    assert server.most_in_flight <= 1000


@pytest.mark.parametrize("script, status, text", [
    (lambda a, s: a.headers(s) + a.trailers(s, 3, "etcdserver: too many operations in txn request"),
     3, "too many operations"),
    (lambda a, s: a.headers(s, end=False) + frame(h2call.HEADERS, h2call.END_HEADERS | h2call.END_STREAM, s,
                                                   a.encoder.encode([(b"grpc-status", b"14")])), 14, ""),
    (lambda a, s: frame(h2call.HEADERS, h2call.END_HEADERS | h2call.END_STREAM, s, a.encoder.encode(
        [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"8"),
         (b"grpc-message", b"grpc: received message larger than max")])), 8, "larger than max"),
    (lambda a, s: a.headers(s, status=b"503"), 2, "HTTP status 503"),
    (lambda a, s: a.headers(s) + a.trailers(s), 2, "without a message"),
    (lambda a, s: a.headers(s) + a.message(s, b"x") + frame(h2call.DATA, h2call.END_STREAM, s), 2, "without trailers"),
    (lambda a, s: a.headers(s) + frame(h2call.DATA, 0, s, b"\1\0\0\0\1x") + a.trailers(s), 2, "compressed"),
    (lambda a, s: a.headers(s) + a.message(s, b"x") + a.message(s, b"y") + a.trailers(s), 2, "for a message of"),
    (lambda a, s: frame(h2call.RST_STREAM, 0, s, (7).to_bytes(4, "big")), 14, "REFUSED_STREAM"),
    (lambda a, s: frame(h2call.RST_STREAM, 0, s, (2).to_bytes(4, "big")), 2, "INTERNAL_ERROR"),
    (lambda a, s: a.headers(s) + frame(h2call.HEADERS, h2call.END_HEADERS | h2call.END_STREAM, s,
                                       a.encoder.encode([(b"x", b"y")])), 2, "no grpc-status"),
])
def test_grpc_errors_are_call_errors_and_the_connection_stays(script, status, text):
    async def go():
        calls = 0

        def handle(writer, answer, stream, body):
            nonlocal calls
            calls += 1
            writer.write(script(answer, stream) if calls == 1 else answer.ok(stream, b"fine"))

        async with Server(handle) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            with pytest.raises(h2call.CallError) as info:
                await channel.call("/x", b"q", 5)
            after = await channel.call("/x", b"q", 5)
            channel.close()
            return info.value, after, server.connections
    error, after, connections = run(go())
    assert (error.status, after) == (status, b"fine")
    assert text in str(error)
    assert connections == 1


@pytest.mark.parametrize("bad, why", [
    (frame(h2call.GOAWAY, 0, 0, bytes(4) + (11).to_bytes(4, "big") + b"too many pings"),
     "GOAWAY ENHANCE_YOUR_CALM: too many pings"),
    (b"\xff" * 20, "bad HTTP/2"),
    (frame(h2call.PUSH_PROMISE, h2call.END_HEADERS, 1, bytes(4)), "PUSH_PROMISE"),
    (frame(h2call.PING, 0, 0, b"short"), "PING must be 8 bytes"),
    (b"", "closed the connection"),
])
def test_a_broken_connection_fails_every_open_call_and_the_next_call_reconnects(bad, why):
    async def go():
        first = True

        async def handle(writer, answer, stream, body):
            nonlocal first
            if body == b"hang":
                return
            if first:
                first = False
                await asyncio.sleep(0.05)  # both calls are open
                if bad:
                    writer.write(bad)
                else:
                    writer.close()
                return
            writer.write(answer.ok(stream, b"again"))

        async with Server(handle) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            results = await asyncio.gather(channel.call("/x", b"hang", 5), channel.call("/x", b"go", 5),
                                           return_exceptions=True)
            again = await channel.call("/x", b"go", 5)
            channel.close()
            return results, again, server.connections
    results, again, connections = run(go())
    assert all(isinstance(r, h2call.ConnectionLost) and why in str(r) for r in results), results
    assert (again, connections) == (b"again", 2)


def test_a_call_that_times_out_resets_its_stream_and_the_connection_serves_on():
    async def go():
        def handle(writer, answer, stream, body):
            if body != b"hang":
                writer.write(answer.ok(stream, b"ok"))

        async with Server(handle) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            with pytest.raises(asyncio.TimeoutError):
                await channel.call("/x", b"hang", 0.1)
            ok = await channel.call("/x", b"go", 5)
            await asyncio.sleep(0.05)
            channel.close()
            return ok, server
    ok, server = run(go())
    assert ok == b"ok"
    assert ("reset", (1, "CANCEL")) in server.frames
    assert server.connections == 1


def test_the_servers_stream_limit_is_kept():
    async def go():
        open_now = peak = 0

        async def handle(writer, answer, stream, body):
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            await asyncio.sleep(0.02)
            open_now -= 1
            writer.write(answer.ok(stream, body))

        async with Server(handle, first=settings_frame(max_streams=2)) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            await channel.call("/x", b"warm", 5)  # the server's SETTINGS are in
            got = await asyncio.gather(*(channel.call("/x", bytes([i]), 5) for i in range(6)))
            channel.close()
            return got, peak
    got, peak = run(go())
    assert got == [bytes([i]) for i in range(6)] and peak <= 2


def test_settings_and_pings_are_acknowledged():
    async def go():
        async with Server(echo, first=frame(h2call.PING, 0, 0, b"12345678") + settings_frame(max_frame=20000)) as server:
            channel = h2call.Channel("127.0.0.1", server.port)
            await channel.call("/x", b"q", 5)
            channel.close()
            return server.frames
    frames = run(go())
    assert ("settings", {h2call.ENABLE_PUSH: 0, h2call.INITIAL_WINDOW_SIZE: h2call.MAX_WINDOW}) in frames
    assert ("window", (0, h2call.MAX_WINDOW - h2call.DEFAULT_WINDOW)) in frames
    # the PING's acknowledgement is a PING with ACK (the parser drops acks: count the bytes instead)


def test_connecting_to_nothing_is_an_os_error():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def go():
        channel = h2call.Channel("127.0.0.1", port)
        with pytest.raises(OSError):
            await channel.call("/x", b"q", 2)
    run(go())


# ---- the parser against any bytes (rule 5)

def _server_bytes(n: int) -> bytes:
    answer = Answer()
    out = settings_frame(window=5000, max_frame=16384) + frame(h2call.PING, 0, 0, b"abcdefgh")
    for i in range(n):
        out += answer.ok(2 * i + 1, bytes(range(i * 7 % 200)))
    return out


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 4), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_any_slicing_of_the_stream_gives_the_same_events(n, cuts):
    data = _server_bytes(n)
    whole = h2call.Parser().feed(data)
    parser = h2call.Parser()
    pieces = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        pieces += parser.feed(data[last:cut])
        last = cut
    assert pieces == whole


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), prefix=st.integers(0, 3))
def test_any_bytes_give_events_or_a_protocol_error(data, prefix):
    parser = h2call.Parser()
    try:
        events = parser.feed(_server_bytes(prefix)[:50 * prefix] + data)
    except h2call.ProtocolError:
        return
    assert all(kind in {"settings", "ping", "window", "headers", "data", "reset", "goaway"} for kind, _ in events)


@settings(max_examples=300, deadline=None)
@given(at=st.integers(0, 10_000), value=st.integers(0, 255))
def test_a_corrupted_byte_gives_events_or_a_protocol_error(at, value):
    data = bytearray(_server_bytes(3))
    data[at % len(data)] = value
    try:
        h2call.Parser().feed(bytes(data))
    except h2call.ProtocolError:
        pass


def test_the_request_header_block_needs_no_hpack_state():
    """Never-indexed literals: the same bytes decode the same with any decoder state (rule 2)."""
    block = h2call.header_block("127.0.0.1:2379", "/etcdserverpb.KV/Txn", "http")
    decoder = hpack.Decoder()
    decoder.decode(hpack.Encoder().encode([("x-other", "1"), ("x-more", "2")]))  # some table state
    assert dict(decoder.decode(block)) == dict(hpack.Decoder().decode(block))
    assert decoder.header_table.dynamic_entries.__len__() == 2  # nothing added by the block
