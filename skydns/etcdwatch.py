"""The etcd mirror: keep a store.Store equal to the etcd prefix ``/<prefix>/``.

Rules of this module:

1. List, then watch. The prefix is read page by page at one fixed revision (a consistent
   snapshot, even while etcd is being written): the first page at the current revision, the
   others at its revision. Each page is decoded into a new snapshot (``view.begin_replace()``,
   ``Load.add_columns``, ``_STEP`` keys at a time, taken out of the page a step at a time too,
   with a yield to the event loop in between: the old snapshot answers meanwhile) as it
   arrives, the request for the next one already sent (etcd reads it while skydns decodes),
   and the snapshot replaces the view whole (``view.finish_replace()``). After the first page
   (``settings.etcd_page_size`` keys, about as many as etcd serves while skydns decodes them)
   the rest comes in about 8 pages, because etcd counts the rest of the range on every
   request. If etcd compacts that revision half-way, the list starts over at once. The watch
   then starts at the list's revision + 1 and applies each event with ``view.put()`` /
   ``view.delete()`` at the event's revision.
2. The view only ever changes by a complete snapshot or by a watch event. An error never
   empties it: while etcd is unreachable the view keeps serving its last good data, and it
   stays ``loaded`` once the first full snapshot is in.
3. A compacted watch start revision means "relist now" (no back-off). Anything else that goes
   wrong (connection refused or lost, a timeout, a frozen etcd, a cancelled watch, an error
   reply) closes the connection, waits on ``settings.backoff`` with +-20 % jitter (attempts
   logged as ``#n``; the schedule starts over only after a watch that stayed up 10 s, so a
   flapping etcd is not relisted in a tight loop), moves to the next endpoint and lists again. Relisting after a reconnect
   (instead of resuming the watch) is deliberate: it is also right when etcd was restored
   from a backup or replaced by an empty one.
4. Silence is not health. A quiet watch is probed with an etcd progress request every
   ``settings.etcd_watch_check`` seconds; no answer within ``settings.etcd_timeout`` seconds
   is a lost watch (a frozen or partitioned etcd never closes the TCP connection).
5. One bad value is skipped by the store (``view.put`` returns False; the store keeps it in
   ``view.bad`` with its reason); the rest of the data keeps flowing. It is logged here, with
   its key, revision and reason, and counted in ``skydns_etcd_bad_values_total``, once per key
   and revision: a relist or reconnect that finds the same bad value again stays quiet (at
   most ``_BAD_LOG_LINES`` lines per relist, then one summary line).
   5a. The log of a compaction names the revision the watch had reached (the last event or
   progress answer applied), not the one it started from.
6. ``run()`` returns only when ``stop`` is set (or it is cancelled); transient errors never
   leave it. Only a broken TLS configuration raises (``ConfigError``), at once.
7. Memory of a load: at most two pages are alive at once (the one being decoded and the next
   one being read), about 1/8 of the prefix each. ``run()`` limits glibc to one malloc arena
   (``mallopt(M_ARENA_MAX, 1)``; nothing on other C libraries), so that memory a thread
   freed is not kept in an arena of its own. The cyclic garbage collector is paused while a
   load runs (and left as it was after): the decode makes many short-lived tuples and lists
   but no cycles, and each collection walked the young ones again (about 0.2 s of the 2 s
   load of 337k keys).
8. skydns speaks etcd's gRPC itself, with ``skydns.grpcwire``, on the event loop: no grpcio,
   no threads, and neither grpcio nor aetcd is imported on skydns's start-up path (only
   ``make_client``, for ``skydns doctor``, imports them). The messages are upb classes of
   the etcd fields the mirror uses (``pb``). A load's Range calls go one after another on a
   connection of their own (a new one per load); the watch is the Watch call on another
   connection to the same endpoint. Both are HTTP/2 without TLS, or TLS with ALPN "h2" and the
   same -ca-cert / -tls-pem / -tls-key (the client certificate is the etcd user). Each watch
   response is decoded and applied inside the connection's read callback, in order; the
   watch coroutine wakes only for rule 4's probes and for the end of the call (trailers,
   reset, GOAWAY, a lost connection, a protocol error: rule 3's "anything else"). grpcio's
   asyncio stream cost about 3x the CPU per event, and its Range calls a third more start-up
   time (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import functools
import gc
import logging
import operator
import random
import ssl
import time
import types
import typing
from collections.abc import Callable, Iterable, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import message as protobuf_message

from skydns import grpcwire
from skydns import settings as settings_mod

if typing.TYPE_CHECKING:
    import aetcd
    import grpc

    from skydns import store

try:  # the SERVER helper's module; the mirror works (without metrics) before it exists
    from skydns import metrics as default_metrics
except ImportError:  # pragma: no cover - only while the tree is being assembled
    default_metrics = None

logger = logging.getLogger(__name__)

# Responses larger than gRPC's 4 MiB default happen with big pages and big transactions.
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
    # Detect dead TCP connections below the application probe too.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
}
# Defaults for settings fields this module reads with getattr (older Settings lack them).
_DEFAULT_TIMEOUT = 5.0
_DEFAULT_WATCH_CHECK = 5.0
_DEFAULT_PAGE_SIZE = 16384
# After the first page of a load: about this many more requests, of at most _MAX_PAGE keys
# (fewer: more memory per page; more: etcd counts the rest of the range once more per page:
# at 337k keys 16 pages cost etcd 0.3 s more CPU than 8, and 8 cost skydns 6 MiB more peak).
_PAGES = 8
# Keys decoded between two yields to the event loop (about 15 ms of CPU): a relist's pages do
# not hold up the answers the old snapshot gives meanwhile.
_STEP = 4096
_MAX_PAGE = 100_000
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
_JITTER = 0.2
# A watch that ran this long was a healthy connection: the next failure restarts the
# back-off schedule at its first step, seconds.
_STABLE = 10.0
# Most "bad value" log lines one relist writes; the rest are summed up in one line (rule 5).
_BAD_LOG_LINES = 20


def _etcd_messages() -> types.SimpleNamespace:
    """The etcd v3 messages the mirror sends and reads (field names and numbers of etcd's
    rpc.proto / kv.proto; enums as int32, the same on the wire), as upb classes of a private
    descriptor pool: no grpcio or aetcd import on skydns's start-up path (rule 8)."""
    u64, i64, i32, boolean, text, raw, sub = (descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                                              descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE)
    many, one = "repeated", "oneof"
    messages = {  # name: (field, number, type or message name, [many | one]) ...
        "ResponseHeader": (("cluster_id", 1, u64), ("member_id", 2, u64), ("revision", 3, i64),
                           ("raft_term", 4, u64)),
        "KeyValue": (("key", 1, raw), ("create_revision", 2, i64), ("mod_revision", 3, i64),
                     ("version", 4, i64), ("value", 5, raw), ("lease", 6, i64)),
        "RangeRequest": (("key", 1, raw), ("range_end", 2, raw), ("limit", 3, i64), ("revision", 4, i64),
                         ("sort_order", 5, i32), ("sort_target", 6, i32), ("serializable", 7, boolean),
                         ("keys_only", 8, boolean), ("count_only", 9, boolean)),
        "RangeResponse": (("header", 1, "ResponseHeader"), ("kvs", 2, "KeyValue", many), ("more", 3, boolean),
                          ("count", 4, i64)),
        "Event": (("type", 1, i32), ("kv", 2, "KeyValue"), ("prev_kv", 3, "KeyValue")),
        "WatchCreateRequest": (("key", 1, raw), ("range_end", 2, raw), ("start_revision", 3, i64),
                               ("progress_notify", 4, boolean), ("filters", 5, i32, many),
                               ("prev_kv", 6, boolean), ("watch_id", 7, i64), ("fragment", 8, boolean)),
        "WatchCancelRequest": (("watch_id", 1, i64),),
        "WatchProgressRequest": (),
        "WatchRequest": (("create_request", 1, "WatchCreateRequest", one),
                         ("cancel_request", 2, "WatchCancelRequest", one),
                         ("progress_request", 3, "WatchProgressRequest", one)),
        "WatchResponse": (("header", 1, "ResponseHeader"), ("watch_id", 2, i64), ("created", 3, boolean),
                          ("canceled", 4, boolean), ("compact_revision", 5, i64), ("cancel_reason", 6, text),
                          ("fragment", 7, boolean), ("events", 11, "Event", many)),
    }
    package = "skydns.etcdwatch"
    proto = descriptor_pb2.FileDescriptorProto(name="skydns/etcdwatch.proto", package=package, syntax="proto3")
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, *how in fields:
            add = message.field.add(name=field, number=number, json_name=field)
            add.label = add.LABEL_REPEATED if how == [many] else add.LABEL_OPTIONAL
            if isinstance(kind, str):
                add.type, add.type_name = sub, f".{package}.{kind}"
            else:
                add.type = kind
            if how == [one]:  # WatchRequest's request_union, its only oneof
                add.oneof_index = 0
                if not message.oneof_decl:
                    message.oneof_decl.add(name="request_union")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return types.SimpleNamespace(**{name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages})


pb = _etcd_messages()
_DELETE = 1  # mvccpb.Event.EventType.DELETE
_RANGE_PATH = "/etcdserverpb.KV/Range"
_KEY = operator.attrgetter("key")
_VALUE = operator.attrgetter("value")
_COMPACTED = "required revision has been compacted"


class Error(Exception):
    """Base of this module's errors."""


class ConfigError(Error):
    """The etcd client configuration is broken (bad endpoint, unreadable TLS file)."""


class WatchLost(Error):
    """The watch stream ended, was cancelled by etcd, or stopped answering."""


class StreamEnded(WatchLost):
    """The watch call or its connection ended (the text says how)."""


class CallFailed(Error):
    """A unary call (Range) ended with a grpc-status other than 0, or without its answer."""

    def __init__(self, text: str, status: str = "") -> None:
        super().__init__(text)
        self.status = status


class Compacted(Error):
    """The revision to watch from is compacted away; the caller relists."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd keeps revisions from {compact_revision}")
        self.compact_revision = compact_revision


class Change(enum.Enum):
    """What happened to the view."""

    REPLACE = "replace"
    PUT = "put"
    DELETE = "delete"


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    """One change applied to the view, passed to ``run(on_event=...)`` after it is applied.

    ``key`` is the etcd key ("" for REPLACE); ``ok`` is False for a bad value that was skipped.
    """

    change: Change
    key: str
    revision: int
    ok: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd server address."""

    host: str
    port: int = 2379
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port``, ``host`` or ``http(s)://host:port[/]``.

    Raises:
        ConfigError: not an address.
    """
    rest = text.strip()
    tls = False
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() not in ("http", "https"):
            raise ConfigError(f"etcd endpoint {text!r}: scheme must be http or https")
        tls = scheme.lower() == "https"
    rest = rest.rstrip("/")
    port = 2379
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ConfigError(f"etcd endpoint {text!r}: expected [address]:port")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"etcd endpoint {text!r}: bad port {port_text!r}")
        port = int(port_text)
    if not host:
        raise ConfigError(f"etcd endpoint {text!r}: no host")
    return Endpoint(host, port, tls)


def endpoints(settings: settings_mod.Settings) -> list[Endpoint]:
    """The configured endpoints, in order (ConfigError when there are none or one is bad)."""
    found = [parse_endpoint(item) for item in settings.etcd_endpoints if item.strip()]
    if not found:
        raise ConfigError("no etcd endpoint configured (-machines)")
    return found


def retry_delay(schedule: Sequence[float], attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based); the last step repeats."""
    base = schedule[min(max(attempt, 1), len(schedule)) - 1] if schedule else 1.0
    return max(0.0, base * rng.uniform(1 - _JITTER, 1 + _JITTER))


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc


def credentials(settings: settings_mod.Settings, tls: bool = False) -> grpc.ChannelCredentials | None:
    """grpcio TLS credentials from -ca-cert / -tls-pem / -tls-key, or None for plain text (for
    ``make_client``; the mirror itself uses ``tls_context``).

    TLS is on when any of the files is given or ``tls`` (an https:// endpoint) is set;
    without -ca-cert the system roots are used.

    Raises:
        ConfigError: a file is unreadable, or only one of -tls-pem / -tls-key is given.
    """
    ca, pem, key = settings.etcd_ca_cert, settings.etcd_tls_pem, settings.etcd_tls_key
    if not (ca or pem or key or tls):
        return None
    if bool(pem) != bool(key):
        raise ConfigError("etcd TLS: give both -tls-pem (client certificate) and -tls-key (its key)")
    import grpc  # noqa: PLC0415 - only skydns doctor's client needs grpcio (rule 8)

    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "-ca-cert file") if ca else None,
        private_key=_read(key, "-tls-key file") if key else None,
        certificate_chain=_read(pem, "-tls-pem file") if pem else None,
    )


def tls_context(settings: settings_mod.Settings, tls: bool = False) -> ssl.SSLContext | None:
    """The TLS context of the watch connection, from the same files and rules as ``credentials``
    (only the configured CA is trusted when -ca-cert is given), offering HTTP/2 by ALPN.

    Raises:
        ConfigError: a file is unreadable or not a certificate / key, or only one of
        -tls-pem / -tls-key is given.
    """
    ca, pem, key = settings.etcd_ca_cert, settings.etcd_tls_pem, settings.etcd_tls_key
    if not (ca or pem or key or tls):
        return None
    if bool(pem) != bool(key):
        raise ConfigError("etcd TLS: give both -tls-pem (client certificate) and -tls-key (its key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if ca:
            context.load_verify_locations(cadata=_read(ca, "-ca-cert file").decode("ascii", "replace"))
        else:
            context.load_default_certs()
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"etcd TLS: no certificate in -ca-cert file {ca!r}: {exc}") from exc
    if pem:
        _read(pem, "-tls-pem file")
        _read(key, "-tls-key file")
        try:
            context.load_cert_chain(pem, key)
        except ssl.SSLError as exc:
            raise ConfigError(f"etcd TLS: -tls-pem {pem!r} / -tls-key {key!r}: {exc}") from exc
    context.set_alpn_protocols(["h2"])
    return context


def make_client(settings: settings_mod.Settings, endpoint: Endpoint | str | None = None) -> aetcd.Client:
    """An aetcd client for ``endpoint`` (default: the first configured one), TLS as configured
    (``skydns doctor`` reads etcd with it; the mirror speaks gRPC itself, rule 8).

    The connection is opened lazily by the first request.

    Raises:
        ConfigError: bad endpoint or TLS files.
    """
    if endpoint is None:
        endpoint = endpoints(settings)[0]
    elif isinstance(endpoint, str):
        endpoint = parse_endpoint(endpoint)
    timeout = getattr(settings, "etcd_timeout", _DEFAULT_TIMEOUT)
    return _client_class()(endpoint, credentials(settings, endpoint.tls), timeout)


@functools.cache
def _client_class() -> type:
    import aetcd  # noqa: PLC0415 - not on skydns's start-up path (rule 8)
    from aetcd import rpc  # noqa: PLC0415

    class Client(aetcd.Client):
        """aetcd.Client on a channel we build: TLS when configured, our channel options."""

        def __init__(self, endpoint: Endpoint, creds: grpc.ChannelCredentials | None, timeout: float) -> None:
            super().__init__(host=endpoint.host, port=endpoint.port, timeout=timeout, options=_CHANNEL_OPTIONS)
            self.endpoint = endpoint
            self._creds = creds

        async def connect(self) -> None:
            if self._connected.is_set():
                return
            target = str(self.endpoint)
            options = list(self._options.items())
            if self._creds is None:
                self.channel = rpc.insecure_channel(target, options=options)
            else:
                self.channel = rpc.secure_channel(target, self._creds, options=options)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                          metadata=self.metadata)
            self._connected.set()

    return Client


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of etcd's range of every key starting with prefix (clientv3.GetPrefixRangeEnd)."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes((prefix[i] + 1,))
    return b"\0"


class _Meters:
    """The skydns_etcd_* metrics, each optional (no-op when the metrics module lacks it)."""

    def __init__(self, module: object | None) -> None:
        def find(*names: str) -> object | None:
            for name in names:
                found = getattr(module, name, None) if module is not None else None
                if found is not None:
                    return found
            return None

        self.keys = find("etcd_keys", "ETCD_KEYS")
        self.revision = find("etcd_revision", "ETCD_REVISION")
        self.last_event = find("etcd_last_event_timestamp_seconds", "etcd_last_event_timestamp",
                               "ETCD_LAST_EVENT_TIMESTAMP_SECONDS")
        self.reconnects = find("etcd_watch_reconnects_total", "etcd_watch_reconnects",
                               "ETCD_WATCH_RECONNECTS_TOTAL")
        self.bad = find("etcd_bad_values_total", "etcd_bad_values", "ETCD_BAD_VALUES_TOTAL")
        self.ready = find("etcd_ready", "ETCD_READY")
        self.connected_gauge = find("etcd_connected", "ETCD_CONNECTED")
        self.event_time = 0.0  # of the last change (the last-event gauge's value)
        self._follows: store.Store | None = None  # the view the gauges read when scraped

    @staticmethod
    def _call(metric: object | None, method: str, *args: float) -> None:
        if metric is None:
            return
        try:
            getattr(metric, method)(*args)
        except Exception:  # noqa: BLE001 - metrics never break the mirror
            logger.debug("etcd: metric update failed", exc_info=True)

    def view_changed(self, view: store.Store, event_time: float | None = None) -> None:
        """The view changed (at event_time, when given). Gauges that can read their value
        when scraped (prometheus ``Gauge.set_function``) are pointed at the view once and
        then cost nothing per watch event; others are set here."""
        if event_time is not None:
            self.event_time = event_time
        if self._follows is view:
            return
        if self._follow(view):
            return
        self._call(self.keys, "set", len(view))
        self._call(self.revision, "set", view.revision)
        if event_time is not None:
            self._call(self.last_event, "set", event_time)

    def _follow(self, view: store.Store) -> bool:
        gauges = (self.keys, self.revision, self.last_event)
        if not all(callable(getattr(gauge, "set_function", None)) for gauge in gauges):
            return False
        try:
            self.keys.set_function(lambda: len(view))  # type: ignore[union-attr]
            self.revision.set_function(lambda: view.revision)  # type: ignore[union-attr]
            self.last_event.set_function(lambda: self.event_time)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - metrics never break the mirror
            logger.debug("etcd: metric set_function failed", exc_info=True)
            return False
        self._follows = view
        return True

    def bad_value(self, count: int = 1) -> None:
        if count:
            self._call(self.bad, "inc", count)

    def loaded(self, view: store.Store) -> None:
        self._call(self.ready, "set", 1 if view.loaded else 0)

    def connected(self, up: bool) -> None:
        self._call(self.connected_gauge, "set", 1 if up else 0)

    def reconnect(self) -> None:
        self._call(self.reconnects, "inc")


def _describe(exc: BaseException) -> str:
    """A short text for a log line."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, (StreamEnded, CallFailed)):
        return str(exc)
    if isinstance(exc, grpcwire.ProtocolError):
        return f"bad HTTP/2 from etcd: {exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Mirror:
    """One mirror loop; all state of run() lives here."""

    def __init__(self, settings: settings_mod.Settings, view: store.Store,
                 on_event: Callable[[Update], object] | None, meters: _Meters,
                 rng: random.Random) -> None:
        self.settings = settings
        self.view = view
        self.on_event = on_event
        self.meters = meters
        self.rng = rng
        self.prefix = f"/{settings.prefix.strip('/')}/".encode()
        self.range_end = prefix_range_end(self.prefix)
        self.timeout = float(getattr(settings, "etcd_timeout", _DEFAULT_TIMEOUT))
        self.watch_check = float(getattr(settings, "etcd_watch_check", _DEFAULT_WATCH_CHECK))
        self.page_size = int(getattr(settings, "etcd_page_size", _DEFAULT_PAGE_SIZE))
        self.endpoints = endpoints(settings)
        # The connections' TLS context per endpoint kind (plain / https://), made now: a bad
        # TLS file is a start-up error (rule 6).
        self.tls = {tls: tls_context(settings, tls) for tls in {ep.tls for ep in self.endpoints}}
        # Fragments of one revision waiting for the last one (WatchResponse.fragment).
        self.pending: list = []
        # The revision the view reflects: the list's, then each applied event's (rule 5a).
        self.reached = 0
        # Bad values already logged and counted: key -> (revision, reason) (rule 5).
        self.reported: dict[str, tuple[int, str]] = {}

    def _notify(self, update: Update) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(update)
        except Exception:  # noqa: BLE001 - a callback bug must not stop the mirror
            logger.exception("etcd: on_event callback failed for %s %s", update.change.value, update.key)

    async def loop(self) -> None:
        attempt = 0
        index = 0
        delay = 0.0
        watching_since = 0.0
        while True:
            endpoint = self.endpoints[index]
            phase = "list"
            try:
                revision = await self._load(endpoint)
                watching_since = asyncio.get_running_loop().time()
                phase = "watch"
                while True:
                    try:
                        await self._watch(endpoint, revision + 1)
                    except Compacted as exc:
                        self.meters.reconnect()
                        logger.info("etcd: watch at revision %d compacted, relisting (history starts at %d)",
                                    max(revision, self.reached) + 1, exc.compact_revision)
                        phase = "list"
                        revision = await self._load(endpoint)
                        phase = "watch"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is retried; rule 3
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # a library swallowed our cancellation
                if phase == "watch" and asyncio.get_running_loop().time() - watching_since >= _STABLE:
                    attempt = 0  # a flapping etcd keeps climbing the schedule; a stable one starts over
                attempt += 1
                self.meters.connected(False)
                self.meters.reconnect()
                delay = retry_delay(self.settings.backoff, attempt, self.rng)
                if phase == "watch":
                    logger.warning("etcd: watch lost (%s) on %s, retry #%d in %.2fs",
                                   _describe(exc), endpoint, attempt, delay)
                else:
                    logger.warning("etcd: cannot %s %s (%s), retry #%d in %.2fs",
                                   phase, endpoint, _describe(exc), attempt, delay)
                if not isinstance(exc, (Error, OSError, asyncio.TimeoutError, grpcwire.ProtocolError)):
                    logger.error("etcd: unexpected error", exc_info=exc)
                index = (index + 1) % len(self.endpoints)
            await asyncio.sleep(delay)

    async def _load(self, endpoint: Endpoint) -> int:
        """Read the whole prefix at one revision, replace the view; return the revision.

        Read again from the start, at once, when etcd compacts the revision half-way (rule 3).
        """
        while True:
            calls = await self._open_calls(endpoint)
            try:
                return await self._read(calls, endpoint)
            except CallFailed as exc:
                if _COMPACTED not in str(exc):
                    raise
                logger.info("etcd: the revision of the list was compacted half-way, listing again")
            finally:
                calls.close()

    async def _read(self, calls: _Calls, endpoint: Endpoint) -> int:
        """Rule 1 on one connection: each page is decoded into the new snapshot as it arrives
        and then dropped (never all pages' bytes at once); the view answers from its last
        snapshot until the swap. The cyclic garbage collector waits meanwhile (rule 7)."""
        with _collector_paused():
            return await self._read_pages(calls, endpoint)

    async def _read_pages(self, calls: _Calls, endpoint: Endpoint) -> int:
        load = self.view.begin_replace()
        response = await self._range(calls, self.prefix, 0, self.page_size)
        revision = response.header.revision
        # etcd counts every key from a page's start to the end of the prefix on each request,
        # so many small pages cost O(keys^2) in etcd (60 s for 341k keys in 2000-key pages):
        # after the first page, read the rest in about _PAGES pages.
        limit = max(self.page_size, min(-(-response.count // _PAGES), _MAX_PAGE))
        while True:
            following = None
            if response.more and response.kvs:
                # Ask for the next page before decoding this one: etcd reads it meanwhile.
                following = self._range(calls, response.kvs[-1].key + b"\0", revision, limit)
            kvs = response.kvs
            for start in range(0, len(kvs), _STEP):  # bad values: view.bad
                some = kvs[start:start + _STEP]  # the page's keys and values taken a step at a time
                load.add_columns(list(map(_KEY, some)), list(map(_VALUE, some)))
                del some
                await asyncio.sleep(0)  # the loop reads etcd's next page and answers meanwhile
            del kvs, response
            if following is None:
                break
            response = await following
        self.view.finish_replace(load, revision)
        self.reached = revision
        bad = self.view.bad
        self._report_listed(bad, revision)
        self.meters.view_changed(self.view, time.time())
        self.meters.loaded(self.view)
        self.meters.connected(True)
        logger.info("etcd: loaded %d records at revision %d from %s%s", load.read, revision,
                    endpoint, f" ({len(bad)} bad values skipped)" if bad else "")
        self._notify(Update(Change.REPLACE, "", revision))
        return revision

    def _range(self, calls: _Calls, key: bytes, revision: int, limit: int) -> typing.Awaitable:
        """Send the request for one page of the prefix from key on, at revision (0: the current
        one); await the result for the decoded RangeResponse.

        Pages after the first are serializable reads: the revision pins what they see, and the
        member that served the first page holds it, so no quorum round trip is needed.
        """
        request = pb.RangeRequest(key=key, range_end=self.range_end, limit=limit, revision=revision,
                                  serializable=bool(revision))
        reply = calls.call(_RANGE_PATH, request.SerializeToString())
        return _range_response(reply, self.timeout)

    async def _open_calls(self, endpoint: Endpoint) -> _Calls:
        """A new connection for the Range calls of one load (a seam for tests)."""
        return await open_calls(endpoint, self.tls[endpoint.tls], self.timeout)

    async def _watch(self, endpoint: Endpoint, start_revision: int) -> None:
        """Apply watch events from start_revision on; return never (raises on any end).

        The responses are applied by ``_on_response`` as the connection reads them; this
        coroutine only wakes up for the progress probes of rule 4 and for the end.
        """
        create = pb.WatchCreateRequest(key=self.prefix, range_end=self.range_end,
                                        start_revision=start_revision, progress_notify=True,
                                        fragment=True)
        self.pending = []
        stream = await self._open_watch(endpoint, self._on_response)
        try:
            stream.send(pb.WatchRequest(create_request=create))
            loop = asyncio.get_running_loop()
            probe_sent: float | None = None
            while True:
                now = loop.time()
                if probe_sent is not None and stream.last_read >= probe_sent:
                    probe_sent = None  # answered (or any response came meanwhile)
                if probe_sent is None:
                    wait = stream.last_read + self.watch_check - now
                    if wait <= 0:
                        stream.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                        probe_sent = now
                        wait = self.timeout
                else:
                    wait = probe_sent + self.timeout - now
                    if wait <= 0:
                        raise WatchLost(f"no answer from etcd for {self.watch_check + self.timeout:.1f}s")
                await asyncio.wait((stream.ended,), timeout=wait)
                if stream.ended.done():
                    stream.ended.result()  # raises why it ended
                    raise StreamEnded("watch stream closed")
        finally:
            stream.close()

    def _on_response(self, response: pb.WatchResponse) -> None:
        """One WatchResponse, in order; raises Compacted or WatchLost when the watch is over."""
        if response.compact_revision:
            raise Compacted(response.compact_revision)
        if response.canceled:
            raise WatchLost(f"watch cancelled by etcd: {response.cancel_reason or 'no reason'}")
        if response.created:
            return
        if not response.events:  # a progress answer: every event up to it was sent
            if not self.pending and response.header.revision > self.reached:
                self.reached = response.header.revision
            return
        if response.fragment:
            self.pending.extend(response.events)
            return  # more of the same revision follows
        if self.pending:
            events, self.pending = [*self.pending, *response.events], []
            self._apply(events)
        else:
            self._apply(response.events)

    async def _open_watch(self, endpoint: Endpoint, on_response: Callable[[pb.WatchResponse], None]) -> _Stream:
        """A new connection to endpoint with the Watch call open on it (a seam for scripted
        streams in unit tests)."""
        return await open_stream(endpoint, self.tls[endpoint.tls], on_response, self.timeout)

    def _apply(self, events: Iterable) -> None:
        view = self.view
        reported = self.reported
        notify = self.on_event is not None
        for event in events:
            kv = event.kv
            key = kv.key.decode("utf-8", "replace")
            revision = kv.mod_revision
            if revision > self.reached:
                self.reached = revision
            if event.type == _DELETE:
                view.delete(key, revision)
                if reported:
                    reported.pop(key, None)
                if notify:
                    self._notify(Update(Change.DELETE, key, revision))
            elif view.put(key, kv.value, revision):
                if reported:
                    reported.pop(key, None)
                if notify:
                    self._notify(Update(Change.PUT, key, revision))
            else:
                reason = view.bad.get(key, "not a valid record")
                if self._report_bad(key, revision, reason):
                    logger.warning("etcd: skipping bad value at %s (revision %d): %s", key, revision,
                                   _reason(key, reason))
                if notify:
                    self._notify(Update(Change.PUT, key, revision, ok=False))
        self.meters.view_changed(view, time.time())

    def _report_bad(self, key: str, revision: int, reason: str, listed: bool = False) -> bool:
        """Log and count one bad value unless this key and revision were reported (rule 5);
        True when it was new. ``listed``: found by a relist at ``revision`` (its own
        modification revision is not known there)."""
        seen = self.reported.get(key)
        if seen is not None and (seen[0] == revision or (listed and seen[1] == reason)):
            return False
        self.reported[key] = (revision, reason)
        self.meters.bad_value()
        return True

    def _report_listed(self, bad: dict[str, str], revision: int) -> None:
        """Rule 5 for a relist: new bad values logged (a bounded number of lines), keys that
        are no longer bad forgotten."""
        fresh = [key for key, reason in bad.items() if self._report_bad(key, revision, reason, listed=True)]
        for key in fresh[:_BAD_LOG_LINES]:
            logger.warning("etcd: skipping bad value at %s (listed at revision %d): %s", key, revision,
                           _reason(key, bad[key]))
        if len(fresh) > _BAD_LOG_LINES:
            logger.warning("etcd: skipping %d more bad values (listed at revision %d; "
                           "`skydns doctor` lists them)", len(fresh) - _BAD_LOG_LINES, revision)
        for key in [key for key in self.reported if key not in bad]:
            del self.reported[key]


_WATCH_PATH = "/etcdserverpb.Watch/Watch"


class _Connection(asyncio.Protocol):
    """What the watch's and the load's HTTP/2 connections (skydns.grpcwire) share: etcd's
    flow-control windows and settings, the acknowledgements, the connection window given back.
    A subclass sends what waits for window in ``_flush`` and ends in ``_end``."""

    def __init__(self) -> None:
        self._decoder = grpcwire.Decoder()
        self._transport: asyncio.Transport | None = None
        self._window = grpcwire.DEFAULT_WINDOW  # what etcd lets us send on the connection
        self._initial = grpcwire.DEFAULT_WINDOW  # ... on a new stream (SETTINGS_INITIAL_WINDOW_SIZE)
        self._stream_window = grpcwire.DEFAULT_WINDOW  # ... on the call's stream
        self._returned = 0  # bytes consumed that WINDOW_UPDATEs gave back

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost says so

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(StreamEnded(f"connection to etcd lost{': ' + str(exc) if exc else ''}"))

    def _flush(self) -> None:
        raise NotImplementedError

    def _end(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _connection_event(self, kind: str, value: object) -> bool:
        """A SETTINGS, PING or WINDOW event applied and acknowledged (then whatever waited for
        window is sent); False for the call's own events (MESSAGE, END)."""
        if kind == grpcwire.SETTINGS:
            initial = value.get(grpcwire.INITIAL_WINDOW_SIZE)  # type: ignore[attr-defined]
            if initial is not None:
                self._stream_window += initial - self._initial
                self._initial = initial
            self._transport.write(grpcwire.settings_ack())  # type: ignore[union-attr]
            self._flush()
        elif kind == grpcwire.PING:
            self._transport.write(grpcwire.ping_ack(value))  # type: ignore[union-attr,arg-type]
        elif kind == grpcwire.WINDOW:
            stream, increment = value  # type: ignore[misc]
            if stream == 0:
                self._window += increment
            elif stream == self._decoder.stream:
                self._stream_window += increment
            self._flush()
        else:
            return False
        return True

    def _give_back(self, also_stream: bool = False) -> None:
        """Return what was read to the connection's window once half of it is used (and to the
        call's stream's, ``also_stream``: a unary call's stream never uses up the largest)."""
        taken = self._decoder.consumed - self._returned
        if taken >= grpcwire.MAX_WINDOW // 2:
            self._returned += taken
            update = grpcwire.window_update(0, taken)
            if also_stream:
                update += grpcwire.window_update(self._decoder.stream, taken)
            self._transport.write(update)  # type: ignore[union-attr]


class _Stream(_Connection):
    """etcd's Watch call on its own HTTP/2 connection (skydns.grpcwire): each response is
    decoded and handed to ``on_response`` right in ``data_received``, in order.

    ``ended`` gets the exception that ended the call (an exception of ``on_response`` too,
    which also closes the connection); ``last_read`` is the loop time of the last response.
    Sends stay within etcd's flow-control windows (waiting for WINDOW_UPDATE when needed).
    """

    def __init__(self, on_response: Callable[[pb.WatchResponse], None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._on_response = on_response
        self._loop = loop
        self.ended: asyncio.Future = loop.create_future()
        self.last_read = loop.time()
        self._blocked: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        try:
            for kind, value in self._decoder.feed(data):
                if kind == grpcwire.MESSAGE:
                    self.last_read = self._loop.time()
                    try:
                        response = pb.WatchResponse.FromString(value)
                    except protobuf_message.DecodeError as exc:
                        raise grpcwire.ProtocolError(f"not a WatchResponse: {exc}") from exc
                    self._on_response(response)
                elif not self._connection_event(kind, value):  # END
                    raise StreamEnded(str(value))
            self._give_back(also_stream=True)  # the watch's stream lives as long as the connection
        except Exception as exc:  # noqa: BLE001 - every end of the call goes to ended
            self._end(exc)

    def send(self, request: pb.WatchRequest) -> None:
        """Write one request message (queued while etcd's windows are too small)."""
        self._blocked.append(grpcwire.message(request.SerializeToString()))
        self._flush()

    def _flush(self) -> None:
        while self._blocked and self._transport is not None and not self.ended.done():
            size = len(self._blocked[0]) - 9  # the DATA payload is what flow control counts
            if size > self._window or size > self._stream_window:
                return
            self._window -= size
            self._stream_window -= size
            self._transport.write(self._blocked.pop(0))

    def _end(self, exc: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        """Close the connection (idempotent); the end's exception counts as seen."""
        self._end(StreamEnded("watch closed by skydns"))
        self.ended.exception()


async def open_stream(endpoint: Endpoint, context: ssl.SSLContext | None,
                      on_response: Callable[[pb.WatchResponse], None], timeout: float) -> _Stream:
    """Connect to endpoint (TLS when context is given, HTTP/2 agreed by ALPN) and open the
    Watch call; responses go to on_response. Raises OSError / TimeoutError / StreamEnded."""
    loop = asyncio.get_running_loop()
    transport, stream = await _connect(endpoint, context, lambda: _Stream(on_response, loop), timeout)
    transport.write(grpcwire.preface() + grpcwire.request_headers(
        str(endpoint), _WATCH_PATH, "https" if context is not None else "http"))
    return stream


async def _connect(endpoint: Endpoint, context: ssl.SSLContext | None, factory: Callable[[], asyncio.Protocol],
                   timeout: float) -> tuple[asyncio.Transport, typing.Any]:
    """A connection to endpoint, TLS when context is given with HTTP/2 agreed by ALPN."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, protocol = await loop.create_connection(
            factory, endpoint.host, endpoint.port, ssl=context,
            server_hostname=endpoint.host if context is not None else None)
    if context is not None:
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != "h2":
            transport.close()
            raise StreamEnded(f"{endpoint} did not agree to HTTP/2 over TLS (ALPN)")
    return transport, protocol


class _Calls(_Connection):
    """Unary gRPC calls (Range), one at a time, on an HTTP/2 connection of their own
    (skydns.grpcwire): ``call()`` sends the request at once and returns the future of the
    answer's message bytes; etcd's answer is collected by ``data_received`` meanwhile.

    A call's future gets CallFailed (a grpc-status other than 0, no answer), StreamEnded (the
    connection ended) or grpcwire.ProtocolError; after anything but CallFailed the connection
    is closed and every later call fails the same way.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._authority = ""
        self._scheme = "http"
        self._blocked: bytes | None = None  # the request message waiting for window
        self._calls = 0
        self._reply: asyncio.Future | None = None
        self._answer: bytes | None = None
        self._lost: BaseException | None = None

    def start(self, endpoint: Endpoint, tls: bool) -> None:
        """Write the connection preface (before the first call)."""
        self._authority = str(endpoint)
        self._scheme = "https" if tls else "http"
        self._transport.write(grpcwire.preface())  # type: ignore[union-attr]

    def call(self, path: str, payload: bytes) -> asyncio.Future:
        """Start the unary call of path with one request message; the future of its answer."""
        reply = self._loop.create_future()
        if self._lost is not None:
            reply.set_exception(self._lost)
            return reply
        if self._reply is not None and not self._reply.done():
            raise RuntimeError("one call at a time on a connection")
        try:
            stream = self._decoder.next_call() if self._calls else grpcwire.STREAM
        except grpcwire.ProtocolError as exc:
            reply.set_exception(exc)
            return reply
        self._calls += 1
        self._reply, self._answer = reply, None
        self._stream_window = self._initial
        self._transport.write(grpcwire.request_headers(  # type: ignore[union-attr]
            self._authority, path, self._scheme, stream=stream))
        self._blocked = grpcwire.message(payload, stream=stream, end_stream=True)
        self._flush()
        self._take(self._decoder.pending())
        return reply

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        try:
            self._take(self._decoder.feed(data))
            self._give_back()
        except Exception as exc:  # noqa: BLE001 - every end goes to the call
            self._end(exc)

    def _take(self, items: list) -> None:
        for kind, value in items:
            if kind == grpcwire.MESSAGE:
                if self._answer is not None:
                    raise grpcwire.ProtocolError("a second answer to a unary call")
                self._answer = value  # type: ignore[assignment]
            elif self._connection_event(kind, value):
                pass
            elif not self._decoder.reusable:  # END: reset, GOAWAY, no trailers
                raise StreamEnded(str(value))
            else:  # END by trailers
                reply, answer, self._answer = self._reply, self._answer, None
                status = self._decoder.status
                if reply is None or reply.done():
                    continue
                if status != "0":
                    reply.set_exception(CallFailed(str(value), status or ""))
                elif answer is None:
                    reply.set_exception(CallFailed(f"{value}: no answer", "0"))
                else:
                    reply.set_result(answer)

    def _flush(self) -> None:
        request = self._blocked
        if request is None or self._transport is None:
            return
        size = len(request) - 9  # the DATA payload is what flow control counts
        if size > self._window or size > self._stream_window:
            return
        self._window -= size
        self._stream_window -= size
        self._blocked = None
        self._transport.write(request)

    def _end(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        """Close the connection (idempotent); a call still open fails."""
        self._end(StreamEnded("connection closed by skydns"))
        if self._reply is not None and self._reply.done() and not self._reply.cancelled():
            self._reply.exception()  # retrieved: no "never retrieved" warning


async def open_calls(endpoint: Endpoint, context: ssl.SSLContext | None, timeout: float) -> _Calls:
    """Connect to endpoint for unary calls (TLS when context is given, HTTP/2 agreed by
    ALPN). Raises OSError / TimeoutError / StreamEnded."""
    loop = asyncio.get_running_loop()
    _, calls = await _connect(endpoint, context, lambda: _Calls(loop), timeout)
    calls.start(endpoint, context is not None)
    return calls


async def _range_response(reply: asyncio.Future, timeout: float) -> typing.Any:
    """The RangeResponse of a Range call's answer (CallFailed when it is not one)."""
    try:
        async with asyncio.timeout(timeout):
            data = await reply
    finally:
        if not reply.done():
            reply.cancel()
    try:
        return pb.RangeResponse.FromString(data)
    except protobuf_message.DecodeError as exc:
        raise grpcwire.ProtocolError(f"not a RangeResponse: {exc}") from exc


def _reason(key: str, reason: str) -> str:
    """A bad value's reason without the key the store put in front of it."""
    return reason[len(key) + 2:] if reason.startswith(key + ": ") else reason


@contextlib.contextmanager
def _collector_paused() -> typing.Iterator[None]:
    """Rule 7: no cyclic garbage collection inside (the collector's state as it was after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _one_malloc_arena() -> None:
    """Rule 7: glibc keeps one malloc arena for every thread (no-op on other C libraries)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


async def run(settings: settings_mod.Settings, view: store.Store, stop: asyncio.Event,
              on_event: Callable[[Update], object] | None = None, *,
              metrics_module: object | None = None, rng: random.Random | None = None) -> None:
    """Mirror the etcd prefix into ``view`` until ``stop`` is set.

    Args:
        on_event: called with an Update after each change to the view (a bad value too).
        metrics_module: where the skydns_etcd_* metric objects live (default skydns.metrics).
        rng: jitter source for the back-off (tests pass a seeded one).

    Raises:
        ConfigError: bad endpoints or TLS files (at once, before any connection).
    """
    _one_malloc_arena()
    mirror = _Mirror(settings, view, on_event,
                     _Meters(metrics_module if metrics_module is not None else default_metrics),
                     rng or random.Random())
    mirror.meters.connected(False)
    mirror.meters.loaded(view)
    task = asyncio.ensure_future(mirror.loop())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopped):
            pending.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
        mirror.meters.connected(False)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # a bug in the loop; app treats it as a dead root task
