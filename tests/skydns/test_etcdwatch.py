"""etcdwatch without etcd: endpoints, back-off, TLS settings, metrics lookup, scripted watch streams.

The watch streams are module-level tuples of real etcd WatchResponse messages, fed to the
mirror's watch loop through a fake gRPC call; the real store.Store receives the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import aetcd
import grpc
import pytest
from aetcd import rpc

from skydns import etcdwatch
from skydns import metrics
from skydns import settings as settings_mod
from skydns import store

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
    return rpc.Event(type=rpc.Event.PUT, kv=kv(key, value, revision))


def delete(key: str, revision: int) -> rpc.Event:
    return rpc.Event(type=rpc.Event.DELETE, kv=kv(key, revision=revision))


def response(*events: rpc.Event, **fields) -> rpc.WatchResponse:
    return rpc.WatchResponse(events=list(events), **fields)


CREATED = response(created=True)
PROGRESS = response(watch_id=-1)
A1 = '{"host":"10.0.0.1"}'
A2 = '{"host":"10.0.0.2"}'
EOF = grpc.aio.EOF
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


class FakeCall:
    """The part of a grpc.aio stream-stream call the watch loop uses."""

    def __init__(self, script: tuple, view: store.Store) -> None:
        self.script = list(script)
        self.view = view
        self.written: list[rpc.WatchRequest] = []
        self.reads = 0
        self.seen: dict[int, frozenset[str]] = {}
        self.cancelled = False

    async def write(self, request: rpc.WatchRequest) -> None:
        self.written.append(request)

    async def read(self):
        self.seen[self.reads] = frozenset(k.removeprefix(PREFIX) for k in self.view.records())
        self.reads += 1
        item = self.script.pop(0) if self.script else HANG
        if item is HANG:
            await asyncio.Event().wait()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


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
    call = FakeCall(stream.script, view)
    mirror._open_watch = lambda client: call

    async def go():
        with pytest.raises(stream.raises, match=stream.match) as info:
            await asyncio.wait_for(mirror._watch(None, 2), 5)
        return info.value

    return asyncio.run(go()), view, call, Meters.bad


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
