"""etcd I/O for kube2sky: read the prefix, commit plans as transactions.

Rules:
1. One Plan is one etcd transaction (the caller chunks plans below --max-txn-ops with
   reconcile.chunk). Puts and deletes of a transaction apply atomically, so a record never
   vanishes between a delete and an add.
2. With leader election every transaction carries a guard (compare: the leader key holds our
   identity); a failed guard raises NotLeader and nothing is written.
3. Every aetcd/gRPC failure becomes EtcdError; the client is closed and the next call
   reconnects, to the next endpoint of --etcd-server. Retrying is the caller's business (it
   keeps the desired state and re-reads etcd after a reconnect).
4. Reads are paged (keys in pages of page_size) so a big prefix never exceeds gRPC's message
   limit; scan() hands the pages over one by one (the engine never holds the whole prefix).
5. TLS (--etcd-cafile / --etcd-certfile / --etcd-keyfile, or an https:// endpoint): the gRPC
   channel is built here with TLS credentials read from the files at each connect (so renewed
   certificates are picked up on the next reconnect). Without a CA file the system roots are
   used. check_tls_files() is the start-up check the CLI runs; a file that goes bad later is
   an EtcdError like any other connection failure (logged, retried).
6. Transactions go to etcd as bytes encoded here (:func:`txn_request`: protobuf wire format
   of etcdserverpb.TxnRequest, equal byte for byte to what the generated classes serialize;
   a test compares them on random plans). Building 337,000 puts through aetcd's per-op
   objects cost about 10 us each, more than everything else of a first sync together. A
   plan of ASCII keys and values (all of kube2sky's) is formatted as one Latin-1 string and
   encoded once: 0.65 us per put instead of 1.1.
   They are sent on an HTTP/2 connection of our own (``kube2sky.h2call``, TLS from the same
   files with ALPN "h2"): grpcio cost about 1.6 ms of CPU per small transaction, h2call about
   a third of that. Reads, leases and the leader election stay on aetcd's channel; an error
   on either connection closes both and moves to the next endpoint (rule 3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import sys
from collections.abc import AsyncIterator, Callable

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils
import aetcd.watcher
import grpc
from google.protobuf import message as protobuf_message

from kube2sky import h2call, reconcile

logger = logging.getLogger(__name__)


# ---- etcdserverpb.TxnRequest on the wire (protobuf encoding, rpc.proto)
#   TxnRequest   { repeated Compare compare = 1; repeated RequestOp success = 2; ... }
#   RequestOp    { oneof request { ... PutRequest request_put = 2; DeleteRangeRequest
#                  request_delete_range = 3; ... } }
#   PutRequest   { bytes key = 1; bytes value = 2; ... }   DeleteRangeRequest { bytes key = 1; ... }
# Every field here is length-delimited: tag byte, varint length, bytes; an empty value is left
# out (proto3 never writes a default).

def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = tuple(_varint(n) for n in range(1 << 14))  # every length below 16 KiB: one lookup


def _field(tag: bytes, data: bytes) -> bytes:
    n = len(data)
    return tag + (_VARINTS[n] if n < 16384 else _varint(n)) + data


# The same lengths as text: an ASCII key or value is its own bytes in Latin-1, so the ops of a
# plain plan are formatted as one string and encoded once.
_VARINT_TEXT = tuple(v.decode("latin-1") for v in _VARINTS)


def _ascii_ops(plan: reconcile.Plan) -> bytes | None:
    """The ops of txn_request for a plan of ASCII keys and values (none empty, each op below
    16 KiB), else None."""
    v = _VARINT_TEXT
    parts = []
    append = parts.append
    for key, value in plan.puts:
        lk, lv = len(key), len(value)
        if not 0 < lv or lk + lv >= 16000 or not key.isascii() or not value.isascii():
            return None
        put = 2 + len(v[lk]) + lk + len(v[lv]) + lv
        append(f"\x12{v[1 + len(v[put]) + put]}\x12{v[put]}\x0a{v[lk]}{key}\x12{v[lv]}{value}")
    for key in plan.deletes:
        lk = len(key)
        if lk >= 16000 or not key.isascii():
            return None
        delete = 1 + len(v[lk]) + lk
        append(f"\x12{v[1 + len(v[delete]) + delete]}\x1a{v[delete]}\x0a{v[lk]}{key}")
    return "".join(parts).encode("latin-1")


def txn_request(plan: reconcile.Plan, compare: bytes = b"") -> bytes:
    """The serialized etcdserverpb.TxnRequest applying plan's puts then its deletes (keys and
    values UTF-8) when the serialized Compare ``compare`` (if any) holds; no failure ops."""
    head = _field(b"\x0a", compare) if compare else b""
    ops = _ascii_ops(plan)
    if ops is not None:
        return head + ops
    parts = [head]  # anything else (non-ASCII, an empty value, a big op): field by field
    append = parts.append
    for key, value in plan.puts:
        val = value.encode()
        put = _field(b"\x0a", key.encode()) + (_field(b"\x12", val) if val else b"")
        append(_field(b"\x12", _field(b"\x12", put)))
    for key in plan.deletes:
        append(_field(b"\x12", _field(b"\x1a", _field(b"\x0a", key.encode()))))
    return b"".join(parts)


def nested_txn_request(plans: list[reconcile.Plan], compare: bytes = b"") -> bytes:
    """The serialized TxnRequest whose success ops are one nested transaction per plan (each
    its puts then its deletes), applied together when ``compare`` (if any) holds."""
    head = _field(b"\x0a", compare) if compare else b""
    return head + b"".join([_field(b"\x12", _field(b"\x22", txn_request(plan))) for plan in plans])


def nesting(max_txn_ops: int) -> tuple[int, int]:
    """(plans per call, operations per plan) for :meth:`Etcd.commit_all` under etcd's
    --max-txn-ops: etcd counts a nested transaction's operations against what its parent
    leaves (the parent's n ops, then at most max - n in each child), so n plans of max - n
    operations fit: 64 x 64 = 4,096 puts in one request at etcd's default of 128."""
    if max_txn_ops < 8:
        return 1, max(1, max_txn_ops)
    outer = max_txn_ops // 2
    return outer, max_txn_ops - outer


class EtcdError(Exception):
    """etcd could not be reached or refused an operation."""


class NotLeader(EtcdError):
    """The leader guard of a transaction failed: another replica holds the leader key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Guard:
    """Compare applied to every write: the key must hold value (the leader's identity)."""

    key: str
    value: str


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd server; tls when it was given as https://."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """'http://host:port', 'https://host:port', 'host:port' or 'host' -> Endpoint; 2379 by default."""
    text = text.strip()
    tls = text.startswith("https://")
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return Endpoint(host, int(rest[1:]) if rest.startswith(":") else 2379, tls)
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        return Endpoint(text, 2379, tls)
    return Endpoint(host, int(port), tls)


@dataclasses.dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files of etcd client TLS; all empty means "system roots, no client certificate"."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def __bool__(self) -> bool:
        return bool(self.ca or self.cert or self.key)


class ConfigError(Exception):
    """A TLS file that cannot be used (the CLI turns it into one line and exit 2)."""


# flag name and what the PEM must hold, per TLSFiles field
_TLS_FLAGS = (("ca", "--etcd-cafile", "CERTIFICATE"), ("cert", "--etcd-certfile", "CERTIFICATE"),
              ("key", "--etcd-keyfile", "PRIVATE KEY"))


def _read_pem(path: str, flag: str, kind: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ConfigError(f"{flag}: cannot read {path}: {err.strerror or err}") from None
    # "-----BEGIN CERTIFICATE-----", "-----BEGIN EC PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----"
    if b"-----BEGIN " not in data or kind.encode() + b"-----" not in data:
        raise ConfigError(f"{flag}: {path} holds no PEM {kind}")
    return data


def check_tls_files(files: TLSFiles) -> None:
    """Raise ConfigError naming the flag and the file when a TLS file cannot be used."""
    if bool(files.cert) != bool(files.key):
        missing = "--etcd-keyfile" if files.cert else "--etcd-certfile"
        raise ConfigError(f"{missing}: give the client certificate and its key together "
                          f"(--etcd-certfile and --etcd-keyfile)")
    for field, flag, kind in _TLS_FLAGS:
        path = getattr(files, field)
        if path:
            _read_pem(path, flag, kind)


def ssl_context(files: TLSFiles) -> ssl.SSLContext:
    """The TLS context of the transactions' HTTP/2 connection, from the same files as
    :func:`credentials` (system roots without a CA file), offering ALPN "h2"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if files.ca:
        context.load_verify_locations(cadata=_read_pem(files.ca, "--etcd-cafile", "CERTIFICATE").decode("ascii"))
    else:
        context.load_default_certs()
    if files.cert:
        _read_pem(files.cert, "--etcd-certfile", "CERTIFICATE")
        if files.key:
            _read_pem(files.key, "--etcd-keyfile", "PRIVATE KEY")
        context.load_cert_chain(files.cert, files.key or None)
    context.set_alpn_protocols(["h2"])
    return context


def credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    """gRPC TLS credentials from the files (system roots without a CA file)."""
    def read(field: str) -> bytes | None:
        for name, flag, kind in _TLS_FLAGS:
            if name == field and getattr(files, field):
                return _read_pem(getattr(files, field), flag, kind)
        return None

    return grpc.ssl_channel_credentials(root_certificates=read("ca"), private_key=read("key"),
                                        certificate_chain=read("cert"))


_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
}


class _Client(aetcd.Client):
    """aetcd.Client whose channel is ours: plain text, or TLS with the given credentials.

    aetcd 1.0 only opens insecure channels; this replaces its connect() with the same steps on
    a secure channel (no etcd user/password: kube2sky authenticates with the client
    certificate).
    """

    def __init__(self, endpoint: Endpoint, creds: grpc.ChannelCredentials | None, timeout: float) -> None:
        super().__init__(host=endpoint.host, port=endpoint.port, timeout=timeout, options=_CHANNEL_OPTIONS)
        self._target = str(endpoint)
        self._creds = creds

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = list(self._options.items())
        if self._creds is None:
            self.channel = aetcd.rpc.insecure_channel(self._target, options=options)
        else:
            self.channel = aetcd.rpc.secure_channel(self._target, self._creds, options=options)
        self.kvstub = aetcd.rpc.KVStub(self.channel)
        self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
        self.leasestub = aetcd.rpc.LeaseStub(self.channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(aetcd.rpc.WatchStub(self.channel), timeout=self._timeout,
                                              metadata=self.metadata)
        # KV.Txn taking the request already serialized (txn_request)
        self.raw_txn = self.channel.unary_unary("/etcdserverpb.KV/Txn", request_serializer=None,
                                                response_deserializer=aetcd.rpc.TxnResponse.FromString)
        self._connected.set()


class Etcd:
    """An aetcd client over a list of endpoints, rotating on failure."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = 10.0, page_size: int = 2000,
                 on_error: Callable[[str], None] | None = None, tls: TLSFiles = TLSFiles()) -> None:
        self.endpoints = tuple(parse_endpoint(e) for e in endpoints) or (Endpoint("127.0.0.1", 2379),)
        self.tls = tls
        self.timeout = timeout
        self.page_size = page_size
        # scan()'s pages: large, because etcd 3.4 walks its index over the rest of the range
        # for every page (measured: 100,000 keys read in pages of 2,000 took 36 s on a busy
        # machine, in pages of 20,000 about 6 s); about 4 MB of gRPC message per page
        self.scan_page_size = 20000
        self.on_error = on_error
        self.nested = True  # commit_all sends nested transactions (until etcd refuses them)
        self._index = 0
        self._client: aetcd.Client | None = None
        self._h2: h2call.Channel | None = None  # transactions (commit, commit_all)

    @property
    def endpoint(self) -> str:
        current = self.endpoints[self._index]
        return f"https://{current}" if current.tls or self.tls else str(current)

    async def client(self) -> aetcd.Client:
        if self._client is None:
            current = self.endpoints[self._index]
            client = None
            try:
                # TLS files are re-read at every connect: renewed certificates are picked up.
                creds = credentials(self.tls) if current.tls or self.tls else None
                client = _Client(current, creds, self.timeout)
                await asyncio.wait_for(client.connect(), self.timeout)
            except Exception as err:  # noqa: BLE001
                await self._drop(client)
                raise self._error("connect", err) from err
            self._client = client
        return self._client

    async def _drop(self, client: aetcd.Client | None) -> None:
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:  # noqa: BLE001 - closing a broken channel
                pass

    def _error(self, what: str, err: BaseException) -> EtcdError:
        if isinstance(err, EtcdError):
            return err
        if isinstance(err, aetcd.rpc.AioRpcError):
            text = f"{err.code().name}: {err.details()}"
        elif isinstance(err, asyncio.TimeoutError):
            text = f"no answer within {self.timeout:g}s"
        else:
            text = " ".join(str(err).split()) or type(err).__name__
        if self.on_error is not None:
            self.on_error(what)
        hint = ""
        if isinstance(err, aetcd.rpc.AioRpcError) and (self.tls or self.endpoints[self._index].tls):
            hint = _tls_hint(f"{err.details()} {err.debug_error_string()}")
        elif isinstance(err, ssl.SSLError):  # the transactions' own TLS connection (h2call)
            hint = _tls_hint(str(err))
        return EtcdError(f"etcd {self.endpoint} {what}: {text[:300]}{hint}")

    async def reset(self) -> None:
        """Close the client; the next call connects to the next endpoint."""
        client, self._client = self._client, None
        channel, self._h2 = self._h2, None
        if channel is not None:
            channel.close()
        await self._drop(client)
        self._index = (self._index + 1) % len(self.endpoints)

    def _channel(self) -> h2call.Channel:
        """The HTTP/2 connection of transactions to the current endpoint (TLS files re-read
        for every new connection, as for the gRPC client)."""
        if self._h2 is None:
            current = self.endpoints[self._index]
            context = ssl_context(self.tls) if current.tls or self.tls else None
            self._h2 = h2call.Channel(current.host, current.port, context)
        return self._h2

    async def _txn(self, request: bytes):
        """One KV.Txn call (the request already serialized) on our own HTTP/2 connection
        (h2call: a third of grpcio's CPU per call); errors as _call gives them."""
        try:
            channel = self._channel()
        except (ConfigError, ssl.SSLError, OSError) as err:
            raise self._error("transaction", err) from err
        try:
            data = await channel.call("/etcdserverpb.KV/Txn", request, self.timeout)
        except h2call.CallError as err:
            error = self._error("transaction", err)
            if err.status != _INVALID_ARGUMENT and self._h2 is channel:
                await self.reset()  # the connection; an invalid request keeps it
            raise error from err
        except (h2call.ConnectionLost, asyncio.TimeoutError, OSError) as err:
            error = self._error("transaction", err)  # names this endpoint, before reset() moves on
            if self._h2 is channel:  # not already reset by another call that failed with it
                await self.reset()
            raise error from err
        try:
            return aetcd.rpc.TxnResponse.FromString(data)
        except protobuf_message.DecodeError as err:
            raise self._error("transaction", ValueError(f"undecodable TxnResponse: {err}")) from err

    async def _call(self, what: str, coro_factory):
        client = None
        try:
            client = await self.client()  # connecting can fail too, while a member restarts
            return await asyncio.wait_for(coro_factory(client), self.timeout + 1)
        except asyncio.CancelledError as err:
            task = asyncio.current_task()
            if task is None or task.cancelling() or client is None or client is self._client:
                raise  # we are being cancelled
            # another call failed and closed the channel under this one (calls are pipelined)
            raise self._error(what, ConnectionError("the connection was closed (another call failed)")) from err
        except aetcd.rpc.AioRpcError as err:
            error = self._error(what, err)
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise error from err  # the request, not the connection: keep it
            try:
                await self.reset()
            except Exception:  # noqa: BLE001 - closing a broken client must not end the caller
                logger.debug("etcd: closing the client after %s failed", what, exc_info=True)
            raise error from err
        except (aetcd.exceptions.ClientError, asyncio.TimeoutError, OSError) as err:
            error = self._error(what, err)  # names this endpoint, before reset() moves on
            try:
                await self.reset()
            except Exception:  # noqa: BLE001 - closing a broken client must not end the caller
                logger.debug("etcd: closing the client after %s failed", what, exc_info=True)
            raise error from err

    async def read_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        """Every key under prefix (e.g. "/skydns/") with its value as text, and the revision."""
        out: dict[str, str] = {}
        revision = 0
        async for revision, kvs in self._pages(prefix, self.page_size):
            for kv in kvs:
                out[kv.key.decode("utf-8", "replace")] = kv.value.decode("utf-8", "replace")
        return out, revision

    async def scan(self, prefix: str, page_size: int = 0) -> AsyncIterator[list[tuple[str, str]]]:
        """Every key under prefix with its value as text, in pages of (key, value), all read at
        the revision of the first page; nothing is kept between pages (a large prefix is
        never held in memory at once)."""
        async for _revision, kvs in self._pages(prefix, page_size or self.scan_page_size):
            yield [(kv.key.decode("utf-8", "replace"), kv.value.decode("utf-8", "replace")) for kv in kvs]

    async def _pages(self, prefix: str, page_size: int) -> AsyncIterator[tuple[int, list]]:
        """The keys under prefix as (revision, key-values) pages of at most page_size, every page
        read at the revision of the first one (a consistent snapshot while etcd is written)."""
        start = prefix.encode()
        end = aetcd.utils.prefix_range_end(start)
        revision = 0
        while True:
            req = aetcd.Client._build_get_range_request(key=start, range_end=end)
            req.limit = page_size
            if revision:
                req.revision = revision

            async def page(client, req=req):
                return await client.kvstub.Range(req, timeout=self.timeout, metadata=client.metadata)

            resp = await self._call("read", page)
            if not revision:
                revision = resp.header.revision
            yield revision, resp.kvs
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    async def commit(self, plan: reconcile.Plan, guard: Guard | None = None, lease: int | None = None) -> int:
        """Apply one plan in one transaction; return the new revision.

        Raises:
            NotLeader: the guard failed (nothing written).
            EtcdError: etcd unreachable or the transaction refused.
        """
        resp = await self._txn(txn_request(plan, _compare(guard)))
        if not resp.succeeded:
            raise NotLeader(f"leader key {guard.key if guard else '?'} is not ours any more")
        return int(resp.header.revision)

    async def commit_all(self, plans: list[reconcile.Plan], guard: Guard | None = None) -> int:
        """Apply several plans (sized by :func:`nesting`) in one request: one transaction
        holding each plan as a nested transaction, all or nothing; return the new revision.
        Should etcd refuse the request ("too many operations": an older or stricter server;
        a request too large: a --max-request-bytes below 1 MiB), the plans are committed one
        by one from then on.

        Raises:
            NotLeader: the guard failed (nothing written).
            EtcdError: etcd unreachable or the transaction refused.
        """
        if len(plans) == 1 or not self.nested:
            revision = 0
            for plan in plans:
                revision = await self.commit(plan, guard)
            return revision
        try:
            resp = await self._txn(nested_txn_request(plans, _compare(guard)))
        except EtcdError as err:
            if not any(why in str(err) for why in _REFUSED):
                raise
            logger.warning("etcd refuses nested transactions (%s): one transaction per %d operations from now on",
                           err, max(len(p) for p in plans))
            self.nested = False
            return await self.commit_all(plans, guard)
        if not resp.succeeded:
            raise NotLeader(f"leader key {guard.key if guard else '?'} is not ours any more")
        return int(resp.header.revision)

    async def close(self) -> None:
        client, self._client = self._client, None
        await self._drop(client)


# etcd's words for a request of nested transactions it will not take
_INVALID_ARGUMENT = 3  # gRPC status: the request is wrong, the connection is fine
_REFUSED = ("too many operations", "request is too large", "larger than max")


def _compare(guard: Guard | None) -> bytes:
    """The serialized Compare of a guard (the key holds the leader's identity), or b""."""
    if guard is None:
        return b""
    return aetcd.rpc.Compare(key=guard.key.encode(), value=guard.value.encode(), result=aetcd.rpc.Compare.EQUAL,
                             target=aetcd.rpc.Compare.VALUE).SerializeToString()


# (words in gRPC's error text, what they mean for the user) - first match wins
_TLS_HINTS = (
    (("certificate_verify_failed", "certificate verify failed", "unable to get local issuer"),
     "etcd's server certificate is not trusted: give the CA that signed it with --etcd-cafile"),
    (("peer name", "hostname mismatch", "subject alternative name"),
     "etcd's server certificate does not name this address: use an address it names in --etcd-server"),
    (("tsi_data_corrupted", "unwrap failed", "certificate required", "bad certificate", "unknown ca",
      "alert"),
     "etcd refused the TLS connection, it probably wants a client certificate it trusts: "
     "give --etcd-certfile and --etcd-keyfile"),
    (("ssl", "tls", "handshake", "tsi_"),
     "TLS failed: check --etcd-server (https://), --etcd-cafile, --etcd-certfile and --etcd-keyfile"),
)


def _tls_hint(text: str) -> str:
    """'; TLS: what to fix' when gRPC's error text of a TLS connection looks like a TLS failure."""
    lowered = text.lower()
    for words, hint in _TLS_HINTS:
        if any(word in lowered for word in words):
            return f"; TLS: {hint}"
    return ""


class DryRun:
    """Stands in for Etcd with --dry-run: holds what would be written and prints every change."""

    def __init__(self, out=None) -> None:
        self.data: dict[str, str] = {}
        self.out = out or sys.stdout
        self.revision = 0
        self.endpoint = "dry-run"
        self.quiet = False

    async def read_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}, self.revision

    async def scan(self, prefix: str, page_size: int = 0) -> AsyncIterator[list[tuple[str, str]]]:
        yield sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))

    async def commit(self, plan: reconcile.Plan, guard: Guard | None = None, lease: int | None = None) -> int:
        for key, value in plan.puts:
            self.data[key] = value
            if not self.quiet:
                print(f"put {key} {value}", file=self.out, flush=True)
        for key in plan.deletes:
            self.data.pop(key, None)
            if not self.quiet:
                print(f"delete {key}", file=self.out, flush=True)
        self.revision += 1
        return self.revision

    async def commit_all(self, plans: list[reconcile.Plan], guard: Guard | None = None) -> int:
        for plan in plans:
            await self.commit(plan, guard)
        return self.revision

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass
