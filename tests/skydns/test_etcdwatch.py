"""etcdwatch without etcd: endpoints, back-off, TLS settings, metrics lookup, scripted watch streams.

The watch streams are module-level tuples of real etcd WatchResponse messages, fed to the
mirror's watch loop through a fake gRPC call; the real store.Store receives the events.
"""

from __future__ import annotations

import asyncio
import gc
import dataclasses
import random

import aetcd
import grpc
import pytest
from hypothesis import given, settings, strategies as st

from skydns import etcdwatch
from skydns import grpcwire
from skydns import metrics
from skydns import settings as settings_mod
from skydns import store

rpc = etcdwatch.pb  # the mirror's own etcd messages (rule 8)
PUT, DELETE = 0, 1  # mvccpb.Event.EventType

# -- endpoints ---------------------------------------------------------------------------------

ENDPOINTS = [
    ("127.0.0.1:2379", etcdwatch.Endpoint("127.0.0.1", 2379)),
    ("10.0.0.1:4001", etcdwatch.Endpoint("10.0.0.1", 4001)),
    ("etcd.kube-system", etcdwatch.Endpoint("etcd.kube-system", 2379)),
    ("http://127.0.0.1:4001", etcdwatch.Endpoint("127.0.0.1", 4001)),
    ("https://etcd:2379/", etcdwatch.Endpoint("etcd", 2379, tls=True)),
    ("[fd00::1]:2379", etcdwatch.Endpoint("fd00::1", 2379)),
    ("[fd00::1]", etcdwatch.Endpoint("fd00::1", 2379)),
    (" 127.0.0.1:2379 ", etcdwatch.Endpoint("127.0.0.1", 2379)),
]


@pytest.mark.parametrize(("text", "want"), ENDPOINTS, ids=[t for t, _ in ENDPOINTS])
def test_parse_endpoint(text, want):
    assert etcdwatch.parse_endpoint(text) == want


BAD_ENDPOINTS = ["ftp://etcd:21", "etcd:port", "etcd:0", "etcd:70000", ":2379", "[fd00::1", "[::1]x"]


@pytest.mark.parametrize("text", BAD_ENDPOINTS, ids=BAD_ENDPOINTS)
def test_parse_endpoint_rejects(text):
    with pytest.raises(etcdwatch.ConfigError, match="etcd endpoint"):
        etcdwatch.parse_endpoint(text)


@pytest.mark.parametrize(("endpoint", "text"), [
    (etcdwatch.Endpoint("127.0.0.1", 2379), "127.0.0.1:2379"),
    (etcdwatch.Endpoint("fd00::1", 2379), "[fd00::1]:2379"),
], ids=["v4", "v6"])
def test_endpoint_str_is_a_grpc_target(endpoint, text):
    assert str(endpoint) == text


def test_no_endpoints_is_a_config_error():
    with pytest.raises(etcdwatch.ConfigError, match="no etcd endpoint"):
        etcdwatch.endpoints(settings_mod.Settings(etcd_endpoints=()))


# -- back-off ----------------------------------------------------------------------------------

SCHEDULE = (0.1, 0.5, 2.0)
DELAYS = [
    ("first", 1, 0.1),
    ("second", 2, 0.5),
    ("last", 3, 2.0),
    ("last repeats", 50, 2.0),
    ("zero counts as first", 0, 0.1),
]


@pytest.mark.parametrize(("attempt", "base"), [(a, b) for _, a, b in DELAYS], ids=[i for i, _, _ in DELAYS])
def test_retry_delay_follows_the_schedule_with_jitter(attempt, base):
    rng = random.Random(7)
    delays = [etcdwatch.retry_delay(SCHEDULE, attempt, rng) for _ in range(200)]
    assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
    assert len(set(delays)) > 1  # jittered


def test_retry_delay_without_a_schedule():
    assert 0.8 <= etcdwatch.retry_delay((), 3, random.Random(1)) <= 1.2


# -- TLS and clients ---------------------------------------------------------------------------

TLS_ERRORS = [
    ("pem without key", dict(etcd_tls_pem="/x.pem"), "both -tls-pem"),
    ("key without pem", dict(etcd_tls_key="/x.key"), "both -tls-pem"),
    ("missing ca", dict(etcd_ca_cert="/nonexistent/ca.pem"), "cannot read -ca-cert file"),
    ("missing pem", dict(etcd_tls_pem="/nonexistent/c.pem", etcd_tls_key="/nonexistent/c.key"),
     "cannot read"),
]


@pytest.mark.parametrize(("overrides", "message"), [(o, m) for _, o, m in TLS_ERRORS],
                         ids=[i for i, _, _ in TLS_ERRORS])
def test_broken_tls_settings_are_config_errors(overrides, message):
    settings = settings_mod.Settings(**overrides)
    with pytest.raises(etcdwatch.ConfigError, match=message):
        etcdwatch.make_client(settings)
    with pytest.raises(etcdwatch.ConfigError, match=message):
        asyncio.run(etcdwatch.run(settings, store.Store(), asyncio.Event()))


def test_plain_client_has_no_credentials():
    assert etcdwatch.credentials(settings_mod.Settings()) is None
    client = etcdwatch.make_client(settings_mod.Settings(etcd_endpoints=("10.1.2.3:4001", "10.1.2.4:4001")))
    assert isinstance(client, aetcd.Client)
    assert str(client.endpoint) == "10.1.2.3:4001"


def test_tls_client_from_files(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    settings = settings_mod.Settings(etcd_ca_cert=str(ca))
    assert isinstance(etcdwatch.credentials(settings), grpc.ChannelCredentials)
    assert isinstance(etcdwatch.credentials(settings_mod.Settings(), tls=True), grpc.ChannelCredentials)
    client = etcdwatch.make_client(settings, "https://etcd:2379")
    assert client.endpoint == etcdwatch.Endpoint("etcd", 2379, tls=True)


# -- metrics -----------------------------------------------------------------------------------

def test_every_mirror_metric_exists_in_skydns_metrics():
    meters = etcdwatch._Meters(metrics)
    missing = [name for name in ("keys", "revision", "last_event", "reconnects", "bad", "ready",
                                 "connected_gauge") if getattr(meters, name) is None]
    assert missing == []


def test_missing_metrics_are_no_ops():
    meters = etcdwatch._Meters(object())
    view = store.Store()
    meters.view_changed(view, 1.0)
    meters.bad_value()
    meters.connected(True)
    meters.loaded(view)
    meters.reconnect()


# -- scripted watch streams --------------------------------------------------------------------

PREFIX = "/skydns/test/"


def kv(key: str, value: str = "", revision: int = 0) -> rpc.KeyValue:
    return rpc.KeyValue(key=(PREFIX + key).encode(), value=value.encode(), mod_revision=revision)


def put(key: str, value: str, revision: int) -> rpc.Event:
    return rpc.Event(type=PUT, kv=kv(key, value, revision))


def delete(key: str, revision: int) -> rpc.Event:
    return rpc.Event(type=DELETE, kv=kv(key, revision=revision))


def response(*events: rpc.Event, **fields) -> rpc.WatchResponse:
    return rpc.WatchResponse(events=list(events), **fields)


CREATED = response(created=True)
PROGRESS = response(watch_id=-1)
A1 = '{"host":"10.0.0.1"}'
A2 = '{"host":"10.0.0.2"}'
EOF = "eof"  # the call ends normally (trailers with grpc-status 0)
HANG = "hang"  # read() never returns: a frozen etcd


@dataclasses.dataclass(frozen=True)
class Stream:
    id: str
    script: tuple
    raises: type[Exception]
    match: str = ""
    keys: frozenset[str] = frozenset()
    bad: int = 0
    # keys in the view when the response at this index is read (before it is applied)
    seen: tuple[tuple[int, frozenset[str]], ...] = ()


STREAMS = [
    Stream("normal", (CREATED, response(put("a", A1, 2), put("b", A2, 3)), response(delete("a", 4)), EOF),
           etcdwatch.WatchLost, "closed by etcd", frozenset({"b"})),
    Stream("progress only", (CREATED, PROGRESS, PROGRESS, response(put("a", A1, 2)), EOF),
           etcdwatch.WatchLost, "closed", frozenset({"a"})),
    Stream("compacted at create", (CREATED, response(canceled=True, compact_revision=9)),
           etcdwatch.Compacted, "from 9"),
    Stream("compacted on create response", (response(created=True, canceled=True, compact_revision=5),),
           etcdwatch.Compacted, "from 5"),
    Stream("cancelled by etcd", (CREATED, response(put("a", A1, 2)),
                                 response(canceled=True, cancel_reason="permission denied")),
           etcdwatch.WatchLost, "permission denied", frozenset({"a"})),
    Stream("bad value skipped", (CREATED, response(put("a", "{oops", 2), put("b", A2, 3)), EOF),
           etcdwatch.WatchLost, "closed", frozenset({"b"}), bad=1),
    Stream("fragments applied together",
           (CREATED, response(put("a", A1, 2), fragment=True), response(put("b", A2, 2), fragment=True),
            response(put("c", A2, 2)), PROGRESS, EOF),
           etcdwatch.WatchLost, "closed", frozenset({"a", "b", "c"}),
           seen=((2, frozenset()), (3, frozenset()), (4, frozenset({"a", "b", "c"})))),
    Stream("error mid-stream", (CREATED, response(put("a", A1, 2)), ConnectionResetError("reset")),
           ConnectionResetError, "reset", frozenset({"a"})),
    Stream("silent etcd", (CREATED, HANG), etcdwatch.WatchLost, "no answer from etcd"),
]


class FakeStream:
    """The part of etcdwatch's watch connection the watch loop uses: ``send``, ``close``,
    ``ended``, ``last_read``; the script is played to ``on_response`` as a connection would."""

    def __init__(self, script: tuple, view: store.Store, on_response) -> None:
        self.script = list(script)
        self.view = view
        self.on_response = on_response
        self.written: list[rpc.WatchRequest] = []
        self.reads = 0
        self.seen: dict[int, frozenset[str]] = {}
        self.cancelled = False
        loop = asyncio.get_running_loop()
        self.ended = loop.create_future()
        self.last_read = loop.time()
        self.task = loop.create_task(self.play())

    async def play(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.seen[self.reads] = frozenset(k.removeprefix(PREFIX) for k in self.view.records())
            self.reads += 1
            item = self.script.pop(0) if self.script else HANG
            if item is HANG:
                return  # never answers again: a frozen etcd
            if item is EOF:
                self.end(etcdwatch.StreamEnded("watch stream closed by etcd (grpc-status 0)"))
                return
            if isinstance(item, Exception):
                self.end(item)
                return
            self.last_read = asyncio.get_running_loop().time()
            try:
                self.on_response(item)
            except Exception as exc:  # noqa: BLE001 - as the real connection does
                self.end(exc)
                return

    def end(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_exception(exc)

    def send(self, request: rpc.WatchRequest) -> None:
        self.written.append(request)

    def close(self) -> None:
        self.cancelled = True
        self.task.cancel()
        self.end(etcdwatch.StreamEnded("closed"))
        self.ended.exception()


def play(stream: Stream):
    """Run the watch loop of a mirror over stream's script; return (error, view, call, metrics)."""
    settings = settings_mod.Settings(etcd_timeout=0.05, etcd_watch_check=0.05)
    view = store.Store()
    view.replace([], 1)

    class Meters:
        bad = 0

    meters = etcdwatch._Meters(None)
    meters.bad_value = lambda count=1: setattr(Meters, "bad", Meters.bad + count)
    mirror = etcdwatch._Mirror(settings, view, None, meters, random.Random(1))
    calls = []

    async def open_watch(client, on_response):
        calls.append(FakeStream(stream.script, view, on_response))
        return calls[-1]

    mirror._open_watch = open_watch

    async def go():
        with pytest.raises(stream.raises, match=stream.match) as info:
            await asyncio.wait_for(mirror._watch(None, 2), 5)
        return info.value

    return asyncio.run(go()), view, calls[0], Meters.bad


@pytest.mark.parametrize("stream", STREAMS, ids=[s.id for s in STREAMS])
def test_watch_stream(stream):
    _, view, call, bad = play(stream)
    assert {k.removeprefix(PREFIX) for k in view.records()} == stream.keys
    assert bad == stream.bad
    assert call.cancelled
    first = call.written[0].create_request
    assert (first.key, first.start_revision, first.progress_notify, first.fragment) == (b"/skydns/", 2, True, True)
    for index, keys in stream.seen:
        assert call.seen[index] == keys, f"view before read #{index}"


def test_a_silent_watch_is_probed_before_it_is_given_up():
    _, _, call, _ = play(STREAMS[-1])
    probes = [w for w in call.written if w.HasField("progress_request")]
    assert len(probes) == 1


def test_watch_events_carry_their_revision():
    _, view, _, _ = play(STREAMS[0])
    assert view.revision == 4


# -- issue 11: bad values reported once per key and revision, the revision a watch reached -------


def test_bad_values_are_reported_once_per_key_and_revision(caplog):
    caplog.set_level("WARNING", logger="skydns.etcdwatch")
    stream = (CREATED, response(put("a", '{"ttl":1e400}', 2), put("b", A2, 3)),
              response(put("a", '{"ttl":1e400}', 4)), response(put("a", A1, 5), put("c", "[", 6)), EOF)
    _, view, _, bad = play(Stream("bad values", stream, etcdwatch.WatchLost, "closed"))
    assert bad == 3  # a at 2, a again at 4 (a new revision), c at 6
    lines = [r.getMessage() for r in caplog.records if r.name == "skydns.etcdwatch"]
    assert lines == [
        f"etcd: skipping bad value at {PREFIX}a (revision 2): ttl must be an integer, got inf",
        f"etcd: skipping bad value at {PREFIX}a (revision 4): ttl must be an integer, got inf",
        f"etcd: skipping bad value at {PREFIX}c (revision 6): not JSON: Expecting value: line 1 column 2 (char 1)",
    ]
    assert set(view.bad) == {PREFIX + "c"}


def test_a_relist_reports_only_new_bad_values(caplog):
    caplog.set_level("WARNING", logger="skydns.etcdwatch")
    counted = []
    meters = etcdwatch._Meters(None)
    meters.bad_value = lambda count=1: counted.append(count)
    view = store.Store()
    mirror = etcdwatch._Mirror(settings_mod.Settings(), view, None, meters, random.Random(1))
    first = [(PREFIX + "x", b'{"port":NaN}'), (PREFIX + "y", b"{"), (PREFIX + "ok", A1.encode())]
    for revision, items in ((10, first), (20, first), (30, first[1:]), (40, first)):
        view.replace(items, revision)
        mirror._report_listed(view.bad, revision)
    lines = [r.getMessage() for r in caplog.records if r.name == "skydns.etcdwatch"]
    assert [line.split(" (")[0] for line in lines] == [
        f"etcd: skipping bad value at {PREFIX}x", f"etcd: skipping bad value at {PREFIX}y",
        f"etcd: skipping bad value at {PREFIX}x"]  # x: gone at 30, back at 40
    assert "(listed at revision 40)" in lines[-1]
    assert sum(counted) == 3


def test_compaction_log_names_the_revision_the_watch_reached(caplog):
    caplog.set_level("INFO", logger="skydns.etcdwatch")
    view = store.Store()
    mirror = etcdwatch._Mirror(settings_mod.Settings(), view, None, etcdwatch._Meters(None), random.Random(1))
    loads = []

    async def load(client):
        loads.append(1)
        if len(loads) > 1:
            raise asyncio.CancelledError  # stop after the relist
        view.replace([], 5)
        mirror.reached = 5
        return 5

    async def watch(client, start):
        mirror._apply([put("a", A1, 8), put("b", A2, 9)])
        raise etcdwatch.Compacted(12)

    class Client:
        async def connect(self):
            pass

    mirror._load = load
    mirror._watch = watch
    original = etcdwatch.make_client
    etcdwatch.make_client = lambda settings, endpoint=None: Client()
    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(mirror.loop())
    finally:
        etcdwatch.make_client = original
    assert "etcd: watch at revision 10 compacted, relisting (history starts at 12)" in caplog.text


# -- the watch connection: etcdwatch._Stream fed bytes, writing into a fake transport ----------


class Transport:
    """What _Stream uses of an asyncio transport."""

    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame in data."""
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + length]))
        data = data[9 + length:]
    return out


def server_headers() -> bytes:
    import hpack
    block = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])
    return grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS, 1, block)


def server_message(response: rpc.WatchResponse) -> bytes:
    payload = response.SerializeToString()
    return grpcwire.frame(grpcwire.DATA, 0, 1, b"\0" + len(payload).to_bytes(4, "big") + payload)


def connected_stream(on_response):
    loop = asyncio.new_event_loop()
    stream = etcdwatch._Stream(on_response, loop)
    transport = Transport()
    stream.connection_made(transport)
    return loop, stream, transport


def test_stream_hands_each_response_over_in_order():
    got = []
    loop, stream, transport = connected_stream(got.append)
    try:
        wire = server_headers() + server_message(CREATED) + server_message(response(put("a", A1, 2)))
        for i in range(len(wire)):  # byte by byte: the same responses
            stream.data_received(wire[i:i + 1])
        assert got == [CREATED, response(put("a", A1, 2))]
        assert not stream.ended.done()
    finally:
        loop.close()


def test_stream_acknowledges_settings_and_pings():
    loop, stream, transport = connected_stream(lambda r: None)
    try:
        stream.data_received(grpcwire.frame(grpcwire.SETTINGS_FRAME, 0, 0, b"")
                             + grpcwire.frame(grpcwire.PING_FRAME, 0, 0, b"12345678"))
        assert frames(transport.out) == [(grpcwire.SETTINGS_FRAME, grpcwire.ACK, 0, b""),
                                         (grpcwire.PING_FRAME, grpcwire.ACK, 0, b"12345678")]
    finally:
        loop.close()


def test_stream_sends_within_etcd_windows():
    loop, stream, transport = connected_stream(lambda r: None)
    try:
        # etcd shrinks the stream window to 10 bytes: a 20-byte request waits for WINDOW_UPDATE
        stream.data_received(grpcwire.frame(grpcwire.SETTINGS_FRAME, 0, 0,
                                            (4).to_bytes(2, "big") + (10).to_bytes(4, "big")))
        transport.out = b""
        request = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        stream.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"/skydns/x")))
        assert transport.out == b""
        stream.data_received(grpcwire.window_update(1, 100))
        sent = frames(transport.out)
        assert [f[0] for f in sent] == [grpcwire.DATA]
        stream.send(request)
        assert [f[0] for f in frames(transport.out)] == [grpcwire.DATA, grpcwire.DATA]
    finally:
        loop.close()


def test_stream_gives_back_what_it_consumed(monkeypatch):
    monkeypatch.setattr(grpcwire, "MAX_WINDOW", 100)  # give back after 50 bytes
    loop, stream, transport = connected_stream(lambda r: None)
    try:
        stream.data_received(server_headers())
        message = server_message(response(put("a", A1, 2)))
        taken = len(message) - 9
        count = 50 // taken + 1
        for _ in range(count):
            stream.data_received(message)
        updates = [f for f in frames(transport.out) if f[0] == grpcwire.WINDOW_UPDATE]
        assert [(f[2], int.from_bytes(f[3], "big")) for f in updates] == [(0, count * taken), (1, count * taken)]
    finally:
        loop.close()


@pytest.mark.parametrize(("wire", "error", "match"), [
    (lambda: server_headers() + server_message(response(canceled=True, cancel_reason="permission denied")),
     etcdwatch.WatchLost, "permission denied"),
    (lambda: server_headers() + grpcwire.frame(grpcwire.DATA, 0, 1, b"\0\0\0\0\x03\xff\xff\xff"),
     grpcwire.ProtocolError, "not a WatchResponse"),
    (lambda: server_headers() + grpcwire.frame(grpcwire.GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\0"),
     etcdwatch.StreamEnded, "GOAWAY NO_ERROR"),
    (lambda: grpcwire.frame(grpcwire.DATA, 0, 1, b""), grpcwire.ProtocolError, "before the response headers"),
], ids=["cancelled", "not protobuf", "goaway", "bad http2"])
def test_stream_ends_with_the_reason(wire, error, match):
    def on_response(r):
        if r.canceled:
            raise etcdwatch.WatchLost(r.cancel_reason)

    loop, stream, transport = connected_stream(on_response)
    try:
        stream.data_received(wire())
        assert transport.closed
        with pytest.raises(error, match=match):
            stream.ended.result()
        stream.data_received(server_message(CREATED))  # nothing after the end
    finally:
        loop.close()


def test_stream_lost_connection():
    loop, stream, transport = connected_stream(lambda r: None)
    try:
        stream.connection_lost(ConnectionResetError("reset by peer"))
        with pytest.raises(etcdwatch.StreamEnded, match="connection to etcd lost: reset by peer"):
            stream.ended.result()
        stream.close()  # idempotent
    finally:
        loop.close()


def test_tls_context_rejects_a_file_without_certificates(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"not a certificate\n")
    with pytest.raises(etcdwatch.ConfigError, match="no certificate in -ca-cert"):
        etcdwatch.tls_context(settings_mod.Settings(etcd_ca_cert=str(ca)))
    assert etcdwatch.tls_context(settings_mod.Settings()) is None
    context = etcdwatch.tls_context(settings_mod.Settings(), tls=True)
    assert context is not None and context.verify_mode.name == "CERT_REQUIRED"


# -- rule 8: the Range calls of a load on a connection of their own ------------------------------

def _hpack_block(fields) -> bytes:
    import hpack
    return hpack.Encoder().encode(fields)


def answer(stream: int, message: bytes | None, status: str = "0", text: str = "") -> bytes:
    """etcd's side of one unary call: headers, the message, trailers."""
    out = grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS, stream,
                         _hpack_block([(":status", "200"), ("content-type", "application/grpc")]))
    if message is not None:
        out += grpcwire.frame(grpcwire.DATA, 0, stream, b"\0" + len(message).to_bytes(4, "big") + message)
    trailers = [("grpc-status", status)] + ([("grpc-message", text)] if text else [])
    return out + grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, stream,
                                _hpack_block(trailers))


def _two_answers() -> bytes:
    one = grpcwire.frame(grpcwire.DATA, 0, 1, b"\0\0\0\0\x01a")
    return answer(1, None).split(grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, 1,
                                                _hpack_block([("grpc-status", "0")])))[0] + one + one


def connected_calls():
    loop = asyncio.new_event_loop()
    calls = etcdwatch._Calls(loop)
    transport = Transport()
    calls.connection_made(transport)
    calls.start(etcdwatch.Endpoint("127.0.0.1", 2379), False)
    return loop, calls, transport


def test_calls_one_after_another_on_odd_streams():
    loop, calls, transport = connected_calls()
    try:
        assert transport.out.startswith(grpcwire.PREFACE)
        transport.out = b""
        first = calls.call("/etcdserverpb.KV/Range", b"req1")
        sent = frames(transport.out)
        assert [(f[0], f[1] & grpcwire.END_STREAM, f[2]) for f in sent] == [
            (grpcwire.HEADERS, 0, 1), (grpcwire.DATA, grpcwire.END_STREAM, 1)]
        assert sent[1][3] == b"\0\0\0\0\x04req1"
        with pytest.raises(RuntimeError, match="one call at a time"):
            calls.call("/etcdserverpb.KV/Range", b"again")
        wire = answer(1, b"page one")
        for i in range(len(wire)):  # byte by byte
            calls.data_received(wire[i:i + 1])
        assert first.result() == b"page one"
        transport.out = b""
        second = calls.call("/etcdserverpb.KV/Range", b"req2")
        assert [f[2] for f in frames(transport.out)] == [3, 3]
        calls.data_received(answer(3, None, "11", "etcdserver: mvcc: required revision has been compacted"))
        with pytest.raises(etcdwatch.CallFailed, match="compacted") as info:
            second.result()
        assert info.value.status == "11" and not transport.closed
        third = calls.call("/etcdserverpb.KV/Range", b"req3")
        calls.data_received(answer(5, None))
        with pytest.raises(etcdwatch.CallFailed, match="no answer"):
            third.result()
    finally:
        loop.close()


@pytest.mark.parametrize(("wire", "error", "match"), [
    (lambda: grpcwire.frame(grpcwire.GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\x02"), etcdwatch.StreamEnded, "GOAWAY INTERNAL"),
    (lambda: grpcwire.frame(grpcwire.RST_STREAM, 0, 1, b"\0\0\0\x08"), etcdwatch.StreamEnded, "reset"),
    (lambda: grpcwire.frame(grpcwire.DATA, 0, 1, b"\0\0\0\0\x01x"), grpcwire.ProtocolError, "before the response"),
    (lambda: _two_answers(), grpcwire.ProtocolError, "second answer"),
], ids=["goaway", "reset", "bad http2", "two answers"])
def test_calls_fail_and_close_on_the_end_of_the_connection(wire, error, match):
    loop, calls, transport = connected_calls()
    try:
        reply = calls.call("/etcdserverpb.KV/Range", b"req")
        calls.data_received(wire())
        with pytest.raises(error, match=match):
            reply.result()
        assert transport.closed
        later = calls.call("/etcdserverpb.KV/Range", b"req")
        with pytest.raises(error, match=match):
            later.result()
        calls.close()
    finally:
        loop.close()


def test_calls_wait_for_etcd_window_and_acknowledge():
    loop, calls, transport = connected_calls()
    try:
        calls.data_received(grpcwire.frame(grpcwire.SETTINGS_FRAME, 0, 0,
                                           (4).to_bytes(2, "big") + (3).to_bytes(4, "big")))
        transport.out = b""
        calls.call("/etcdserverpb.KV/Range", b"0123456789")
        assert [f[0] for f in frames(transport.out)] == [grpcwire.HEADERS]  # DATA waits for window
        calls.data_received(grpcwire.window_update(1, 100) + grpcwire.frame(grpcwire.PING_FRAME, 0, 0, b"12345678"))
        assert [f[0] for f in frames(transport.out)] == [grpcwire.HEADERS, grpcwire.DATA, grpcwire.PING_FRAME]
    finally:
        loop.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_calls_take_any_bytes(junk, with_headers):
    """Whatever etcd sends, the call gets an answer or one of the mirror's errors."""
    loop, calls, transport = connected_calls()
    try:
        reply = calls.call("/etcdserverpb.KV/Range", b"req")
        calls.data_received((answer(1, b"x")[:40] if with_headers else b"") + junk)
        calls.connection_lost(None)
        assert reply.done()
        if reply.exception() is not None:
            assert isinstance(reply.exception(), (etcdwatch.Error, grpcwire.ProtocolError))
    finally:
        loop.close()


# -- the mirror's own etcd messages: the same bytes as etcd's (aetcd's generated classes) -------

def _random_kv(rng, lib):
    return lib.KeyValue(key=rng.randbytes(rng.randint(0, 20)), value=rng.randbytes(rng.randint(0, 40)),
                        create_revision=rng.randint(0, 2**40), mod_revision=rng.randint(0, 2**62),
                        version=rng.randint(0, 9), lease=rng.choice([0, rng.randint(-2**63, 2**63 - 1)]))


@pytest.mark.parametrize("seed", range(10))
def test_messages_match_etcds(seed):
    """Seeded differential test against aetcd's classes (generated from etcd's .proto)."""
    from aetcd import rpc as etcd

    rng = random.Random(seed)
    header = dict(cluster_id=rng.randint(0, 2**64 - 1), member_id=rng.randint(0, 2**64 - 1),
                  revision=rng.randint(0, 2**62), raft_term=rng.randint(0, 2**32))
    kvs = [_random_kv(rng, etcd) for _ in range(rng.randint(0, 30))]
    theirs = etcd.RangeResponse(header=etcd.ResponseHeader(**header), kvs=kvs, more=rng.random() < 0.5,
                                count=rng.randint(0, 10**6))
    ours = rpc.RangeResponse.FromString(theirs.SerializeToString())
    assert (ours.header.revision, ours.more, ours.count) == (theirs.header.revision, theirs.more, theirs.count)
    assert [(kv.key, kv.value, kv.mod_revision, kv.lease) for kv in ours.kvs] == [
        (kv.key, kv.value, kv.mod_revision, kv.lease) for kv in theirs.kvs]
    assert ours.SerializeToString() == theirs.SerializeToString()
    events = [etcd.Event(type=rng.choice([0, 1]), kv=_random_kv(rng, etcd)) for _ in range(rng.randint(0, 5))]
    watch = etcd.WatchResponse(header=etcd.ResponseHeader(**header), watch_id=rng.randint(0, 9),
                               created=rng.random() < 0.3, canceled=rng.random() < 0.2,
                               compact_revision=rng.randint(0, 99), cancel_reason=rng.choice(["", "gone", "caf\u00e9"]),
                               fragment=rng.random() < 0.3, events=events)
    assert rpc.WatchResponse.FromString(watch.SerializeToString()).SerializeToString() == watch.SerializeToString()
    request = dict(key=rng.randbytes(5), range_end=rng.randbytes(5), limit=rng.randint(0, 10**5),
                   revision=rng.randint(0, 10**9), serializable=rng.random() < 0.5)
    assert rpc.RangeRequest(**request).SerializeToString() == etcd.RangeRequest(**request).SerializeToString()
    create = dict(key=b"/skydns/", range_end=b"/skydns0", start_revision=rng.randint(1, 10**9),
                  progress_notify=True, fragment=rng.random() < 0.5, filters=rng.choice([[], [1], [0, 1]]))
    assert (rpc.WatchRequest(create_request=rpc.WatchCreateRequest(**create)).SerializeToString()
            == etcd.WatchRequest(create_request=etcd.WatchCreateRequest(**create)).SerializeToString())
    assert (rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()).SerializeToString()
            == etcd.WatchRequest(progress_request=etcd.WatchProgressRequest()).SerializeToString())


@pytest.mark.parametrize(("prefix", "end"), [(b"/skydns/", b"/skydns0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"),
                                             (b"", b"\0")])
def test_prefix_range_end(prefix, end):
    assert etcdwatch.prefix_range_end(prefix) == end


# -- rule 1: a load pages at one revision, over scripted Range calls ------------------------------

class FakeCalls:
    """A scripted etcd answering Range calls from a sorted dict; ``compact_after`` calls fail
    with etcd's compaction error once."""

    def __init__(self, data: dict[bytes, bytes], revision: int, log: list, compact_after: int | None = None):
        self.data, self.revision, self.log, self.compact_after = data, revision, log, compact_after
        self.closed = False

    def call(self, path: str, payload: bytes) -> asyncio.Future:
        request = rpc.RangeRequest.FromString(payload)
        self.log.append((request.key, request.limit, request.revision, request.serializable))
        reply = asyncio.get_running_loop().create_future()
        if self.compact_after is not None and len(self.log) > self.compact_after:
            self.compact_after = None
            reply.set_exception(etcdwatch.CallFailed(
                "call ended by etcd (grpc-status 11: etcdserver: mvcc: required revision has been compacted)", "11"))
            return reply
        keys = sorted(k for k in self.data if request.key <= k < request.range_end)
        page = keys[:request.limit] if request.limit else keys
        reply.set_result(rpc.RangeResponse(
            header=rpc.ResponseHeader(revision=self.revision), count=len(keys), more=len(page) < len(keys),
            kvs=[rpc.KeyValue(key=k, value=self.data[k], mod_revision=1) for k in page]).SerializeToString())
        return reply

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("size", "page", "compact_after"), [(0, 2000, None), (5, 2, None), (100, 3, None),
                                                              (100, 3, 4), (40, 7, 0)])
def test_load_pages_at_one_revision(size, page, compact_after):
    data = {f"/skydns/local/x/k{i:04}".encode(): ('{"host":"10.0.%d.%d"}' % (i // 250, i % 250)).encode()
            for i in range(size)}
    data[b"/skydnsX"] = b'{"host":"10.9.9.9"}'  # outside the prefix
    settings = settings_mod.Settings(etcd_page_size=page)
    view = store.Store()
    mirror = etcdwatch._Mirror(settings, view, None, etcdwatch._Meters(None), random.Random(1))
    log: list = []
    opened: list[FakeCalls] = []

    async def open_calls(endpoint):
        opened.append(FakeCalls(data, 42, log, compact_after if not opened else None))
        return opened[-1]

    mirror._open_calls = open_calls
    assert asyncio.run(mirror._load(etcdwatch.Endpoint("127.0.0.1"))) == 42
    assert len(view) == size and view.revision == 42 and view.loaded
    assert all(calls.closed for calls in opened) and len(opened) == (1 if compact_after is None else 2)
    last = log if compact_after is None else log[compact_after + 1:]  # the calls of the load that finished
    assert last[0] == (b"/skydns/", page, 0, False)  # the first page: the current revision, quorum
    assert all(rev == 42 and serializable for _, _, rev, serializable in last[1:])
    limits = {limit for _, limit, _, _ in last[1:]}
    assert all(limit >= page for limit in limits)


@pytest.mark.parametrize(("enabled", "fails"), [(True, False), (True, True), (False, False), (False, True)])
def test_the_garbage_collector_waits_during_a_load(enabled, fails):
    """Rule 7: no cyclic collection while a load decodes; the collector is as it was after,
    whether the load finished or failed."""
    data = {f"/skydns/local/x/k{i:02}".encode(): b'{"host":"10.0.0.1"}' for i in range(20)}
    mirror = etcdwatch._Mirror(settings_mod.Settings(etcd_page_size=8), store.Store(), None,
                               etcdwatch._Meters(None), random.Random(1))
    during: list[bool] = []

    class Calls(FakeCalls):
        def call(self, path, payload):
            during.append(gc.isenabled())
            if fails and len(during) == 2:
                raise OSError("connection lost")
            return super().call(path, payload)

    async def open_calls(endpoint):
        return Calls(data, 42, [])

    mirror._open_calls = open_calls
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        if fails:
            with pytest.raises(OSError):
                asyncio.run(mirror._load(etcdwatch.Endpoint("127.0.0.1")))
        else:
            asyncio.run(mirror._load(etcdwatch.Endpoint("127.0.0.1")))
        assert during and not any(during)
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_the_old_snapshot_answers_while_a_load_decodes(monkeypatch):
    """Rule 1: a page is decoded _STEP keys at a time, the loop runs in between, and the view
    shows the old snapshot until the new one is whole."""
    monkeypatch.setattr(etcdwatch, "_STEP", 3)
    data = {f"/skydns/local/x/k{i:02}".encode(): b'{"host":"10.0.0.1"}' for i in range(20)}
    view = store.Store.from_records({"/skydns/local/old/a": '{"host":"10.9.0.1"}'}, revision=7)
    mirror = etcdwatch._Mirror(settings_mod.Settings(etcd_page_size=8), view, None, etcdwatch._Meters(None),
                               random.Random(1))
    seen: list[tuple[int, int]] = []

    async def open_calls(endpoint):
        return FakeCalls(data, 42, [])

    async def watch_the_view():
        while True:
            seen.append((len(view), view.revision))
            await asyncio.sleep(0)

    async def go():
        watcher = asyncio.ensure_future(watch_the_view())
        await asyncio.sleep(0)
        await mirror._load(etcdwatch.Endpoint("127.0.0.1"))
        watcher.cancel()

    mirror._open_calls = open_calls
    asyncio.run(go())
    assert len(seen) >= 20 // 3 and set(seen) == {(1, 7)}
    assert (len(view), view.revision) == (20, 42)
