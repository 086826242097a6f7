"""Unary gRPC calls over one HTTP/2 connection of our own: kube2sky's etcd transactions.

grpcio costs about 1.6 ms of CPU for one small call on this machine (its C core, its poller
threads and the asyncio call machinery; bench/README.md "kube2sky's commits"), more than
kube2sky's own work for a changed endpoint. This client writes the frames itself (RFC 9113,
RFC 7541, gRPC over HTTP/2) and costs a few hundred microseconds per call.

Rules of this module:

1. One connection per ``Channel`` (TCP, or TLS offering ALPN "h2" with the caller's context:
   the client certificate is the etcd user), opened by the first call and shared by
   concurrent calls: stream 1, 3, 5, ... one per call, at most the peer's
   SETTINGS_MAX_CONCURRENT_STREAMS open at once (more wait their turn).
2. A request is one HEADERS frame (a fixed block of literal fields that are never indexed:
   it depends on no HPACK state, so the same bytes serve every call) and the gRPC message in
   DATA frames of at most the peer's SETTINGS_MAX_FRAME_SIZE, sent only within the peer's
   connection and stream windows; what does not fit waits for its WINDOW_UPDATE.
3. Our receive windows are the largest there are (2**31 - 1): the connection's is topped up
   after each GiB received, a stream lives for one answer.
4. An answer is response headers (``:status 200``, ``application/grpc``), one message and
   trailers with ``grpc-status 0``. A grpc-status other than 0 (trailers, or a trailers-only
   answer) raises ``CallError`` with the status and grpc-message; so does a stream reset by
   the peer or an answer without a message.
5. Bytes the parser cannot take (``ProtocolError``: a frame over our maximum, bad padding,
   a bad SETTINGS/PING/WINDOW_UPDATE, a header block cut short, PUSH_PROMISE, an HPACK
   error), GOAWAY, end of file or a socket error end the connection: every open call raises
   ``ConnectionLost`` saying why, and the next call connects again.
6. A call's timeout or cancellation resets its stream (RST_STREAM CANCEL); the connection
   stays up for the others.
"""

from __future__ import annotations

import asyncio
import ssl

import hpack

# The framing shared with skydns's watch client: constants, frame(), preface() (no push, the
# largest windows: rule 3), the error names and ProtocolError are skydns.grpcwire's.
from skydns.grpcwire import (ACK, CONTINUATION, DATA, DEFAULT_WINDOW, END_HEADERS, END_STREAM, ENABLE_PUSH,
                             GOAWAY, HEADERS, INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
                             MAX_WINDOW, PADDED, PREFACE, PUSH_PROMISE,
                             RST_STREAM, WINDOW_UPDATE, ProtocolError, frame, preface)
from skydns.grpcwire import MAX_FRAME as DEFAULT_FRAME
from skydns.grpcwire import PING_FRAME as PING
from skydns.grpcwire import SETTINGS_FRAME as SETTINGS
from skydns.grpcwire import HeaderBlocks, _text, _unpad, control_frame, goaway, next_frame, reset_error

__all__ = ["ACK", "CONTINUATION", "DATA", "DEFAULT_WINDOW", "END_HEADERS", "END_STREAM", "ENABLE_PUSH", "GOAWAY",
           "HEADERS", "INITIAL_WINDOW_SIZE", "MAX_CONCURRENT_STREAMS", "MAX_FRAME_SIZE", "MAX_WINDOW", "PADDED",
           "PING", "PREFACE", "PUSH_PROMISE", "RST_STREAM", "SETTINGS", "WINDOW_UPDATE", "CallError", "Channel",
           "ConnectionLost", "Parser", "ProtocolError", "frame", "header_block", "preface"]

_TOP_UP = 1 << 30  # received bytes after which the connection window is topped up (rule 3)
_LAST_STREAM = 2**31 - 1
CANCEL = 8


class ConnectionLost(Exception):
    """The connection ended under a call (rule 5)."""


class CallError(Exception):
    """The peer answered the call with a gRPC error (rule 4)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"grpc-status {status}: {message}" if message else f"grpc-status {status}")


def header_block(authority: str, path: str, scheme: str, user_agent: str = "kube2sky") -> bytes:
    """The request's header block, every field a never-indexed literal (rule 2)."""
    return hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(name, value) for name, value in (
        (":method", "POST"), (":scheme", scheme), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", user_agent))])


# -- reading the peer's bytes (pure) -----------------------------------------------------------

class Parser:
    """The peer's frames as events, from any slicing of its bytes (PURE).

    ``feed(data)`` returns, in order: ("settings", {id: value}) to be acknowledged,
    ("ping", 8 bytes) to be acknowledged, ("window", (stream, increment)),
    ("headers", (stream, {name: value}, end_stream)), ("data", (stream, payload, end_stream)),
    ("reset", (stream, error text)), ("goaway", (last stream, text)). Raises ProtocolError
    (rule 5); nothing is returned after it.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._blocks = HeaderBlocks()
        self.consumed = 0  # flow-controlled bytes received (DATA payloads, padding included)

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        buf = self._buf + data if self._buf else data
        size = len(buf)
        at = 0
        while (found := next_frame(buf, at)) is not None:
            kind, flags, stream, payload, at = found
            payload = bytes(payload)
            self._blocks.check(kind)
            self._frame(kind, flags, stream, payload, out)
        self._buf = buf[at:] if at < size else b""
        return out

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes, out: list) -> None:
        if kind == DATA:
            if stream == 0:
                raise ProtocolError("DATA on stream 0")
            self.consumed += len(payload)
            if flags & PADDED:
                payload = _unpad(payload)
            out.append(("data", (stream, payload, bool(flags & END_STREAM))))
        elif kind == HEADERS or kind == CONTINUATION:
            if kind == HEADERS and stream == 0:
                raise ProtocolError("HEADERS on stream 0")
            block = self._blocks.frame(kind, flags, stream, payload)
            if block is not None:
                out.append(("headers", block))
        elif control_frame(kind, flags, stream, payload, out):
            pass
        elif kind == RST_STREAM:
            out.append(("reset", (stream, reset_error(stream, payload))))
        elif kind == GOAWAY:
            out.append(("goaway", goaway(stream, payload)))
        # PRIORITY and unknown kinds: skipped (RFC 9113 5.5)


# -- the connection ------------------------------------------------------------------------------

class _Call:
    __slots__ = ("id", "out", "sent", "window", "future", "headers", "message", "chunks")

    def __init__(self, stream: int, body: bytes, window: int, future: asyncio.Future) -> None:
        self.id = stream
        self.out = memoryview(body)
        self.sent = 0
        self.window = window  # the peer's window for this stream
        self.future = future
        self.headers: dict[bytes, bytes] | None = None
        self.chunks: list[bytes] = []
        self.message: bytes | None = None


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection and the calls open on it (rules 2-6). A lost connection is never
    reused: the channel makes a new one (its callbacks cannot touch the new one's state)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.transport: asyncio.Transport | None = None
        self.closed: str | None = None  # why it ended (no call may start on it any more)
        self.parser = Parser()
        self.calls: dict[int, _Call] = {}
        self.next = 1
        self.window = DEFAULT_WINDOW  # the peer's connection window
        self.stream_window = DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame = DEFAULT_FRAME
        self.max_streams = 2**31
        self.slot: asyncio.Future | None = None  # wakes callers waiting for a free stream
        self.topped = 0

    # ---- asyncio.Protocol
    def connection_made(self, transport) -> None:  # type: ignore[override]
        if self.context is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self.closed = "the server did not agree to HTTP/2 (ALPN h2)"
                transport.abort()
                return
        self.transport = transport
        transport.write(preface())  # before anything else can be written (rule 1)

    def data_received(self, data: bytes) -> None:
        if self.closed is not None:
            return
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self.lost(f"bad HTTP/2 from the server: {exc}")
            return
        for kind, value in events:
            getattr(self, "_on_" + kind)(value)
            if self.closed is not None:
                return
        if self.parser.consumed - self.topped >= _TOP_UP:
            grown = self.parser.consumed - self.topped
            self.topped = self.parser.consumed
            self.write(frame(WINDOW_UPDATE, 0, 0, grown.to_bytes(4, "big")))

    def eof_received(self) -> bool:
        self.lost("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(f"connection lost: {exc}" if exc else "the server closed the connection")

    # ---- events (rule 4)
    def _on_settings(self, values: dict[int, int]) -> None:
        if INITIAL_WINDOW_SIZE in values:
            delta = values[INITIAL_WINDOW_SIZE] - self.stream_window
            self.stream_window = values[INITIAL_WINDOW_SIZE]
            for call in self.calls.values():
                call.window += delta
        self.max_frame = values.get(MAX_FRAME_SIZE, self.max_frame)
        self.max_streams = values.get(MAX_CONCURRENT_STREAMS, self.max_streams)
        self.write(frame(SETTINGS, ACK, 0))
        self.pump()
        self.free_slot()  # a higher stream limit lets waiting calls start

    def _on_ping(self, payload: bytes) -> None:
        self.write(frame(PING, ACK, 0, payload))

    def _on_window(self, value: tuple[int, int]) -> None:
        stream, increment = value
        if stream == 0:
            self.window += increment
        elif stream in self.calls:
            self.calls[stream].window += increment
        self.pump()

    def _on_headers(self, value: tuple[int, dict, bool]) -> None:
        stream, fields, end = value
        call = self.calls.get(stream)
        if call is None:
            return  # a call given up (timeout): its answer is dropped
        if call.headers is None:
            status, kind = fields.get(b":status"), fields.get(b"content-type", b"")
            if status != b"200" or not kind.startswith(b"application/grpc"):
                self.finish(call, CallError(2, f"HTTP status {_text(status or b'') or 'missing'}, content-type "
                                               f"{_text(kind)!r}{_detail(fields)}"))
                return
            call.headers = fields
            if not end:
                return
        elif not end:
            self.finish(call, CallError(2, "a second header block that does not end the call"))
            return
        status = fields.get(b"grpc-status")
        if status is None or not status.isdigit():
            self.finish(call, CallError(2, f"no grpc-status in the trailers{_detail(fields)}"))
        elif status != b"0":
            self.finish(call, CallError(int(status), _text(fields.get(b"grpc-message", b""))))
        else:
            message = _message(call)
            self.finish(call, message if isinstance(message, Exception) else None, message)

    def _on_data(self, value: tuple[int, bytes, bool]) -> None:
        stream, payload, end = value
        call = self.calls.get(stream)
        if call is None:
            return
        if call.headers is None:
            self.finish(call, CallError(2, "DATA before the response headers"))
            return
        call.chunks.append(payload)
        if end:
            self.finish(call, CallError(2, "the answer ended without trailers"))

    def _on_reset(self, value: tuple[int, str]) -> None:
        stream, why = value
        call = self.calls.get(stream)
        if call is not None:
            self.finish(call, CallError(14 if why == "REFUSED_STREAM" else 2, f"stream reset by the server ({why})"))

    def _on_goaway(self, value: tuple[int, str]) -> None:
        self.lost(f"connection closed by the server ({value[1]})")

    # ---- calls
    def finish(self, call: _Call, error: Exception | None, result: object = None) -> None:
        self.calls.pop(call.id, None)
        if not call.future.done():
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(result)
        self.free_slot()

    def free_slot(self) -> None:
        if self.slot is not None and not self.slot.done():
            self.slot.set_result(None)
        self.slot = None

    def lost(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
        transport, self.transport = self.transport, None
        calls, self.calls = list(self.calls.values()), {}
        self.free_slot()  # callers waiting for a stream go to a new connection
        for call in calls:
            if not call.future.done():
                call.future.set_exception(ConnectionLost(self.closed))
        if transport is not None:
            transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    def pump(self, first: bytes = b"") -> None:
        """Send ``first`` and what the windows allow of every call's request, in stream order,
        in one write (rule 2)."""
        out = [first]
        for call in self.calls.values():
            total = len(call.out)
            while call.sent < total:
                room = min(self.window, call.window, self.max_frame, total - call.sent)
                if room <= 0:
                    break
                last = call.sent + room == total
                out.append(frame(DATA, END_STREAM if last else 0, call.id, bytes(call.out[call.sent:call.sent + room])))
                call.sent += room
                self.window -= room
                call.window -= room
            if self.window <= 0:
                break
        self.write(b"".join(out))

    def start(self, block: bytes, request: bytes, future: asyncio.Future) -> int:
        """Open a stream for a call: its HEADERS and what the windows allow of its DATA."""
        stream = self.next
        self.next += 2
        self.calls[stream] = _Call(stream, b"\0" + len(request).to_bytes(4, "big") + request,
                                   self.stream_window, future)
        self.pump(frame(HEADERS, END_HEADERS, stream, block))  # with its first DATA, in one write
        return stream

    def give_up(self, stream: int) -> None:
        """A call that will not wait for its answer (rule 6)."""
        if self.calls.pop(stream, None) is not None:
            self.write(frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big")))
            self.free_slot()

    @property
    def usable(self) -> bool:
        return self.closed is None and self.transport is not None and self.next <= _LAST_STREAM - 2


def _message(call: _Call) -> bytes | Exception:
    data = b"".join(call.chunks)
    if len(data) < 5:
        return CallError(2, "an answer without a message")
    if data[0]:
        return CallError(2, f"gRPC message flag {data[0]}: compressed, which was not asked for")
    length = int.from_bytes(data[1:5], "big")
    if length + 5 != len(data):
        return CallError(2, f"an answer of {len(data) - 5} bytes for a message of {length}")
    return data[5:]


class Channel:
    """Unary calls to one server (rules 1-6): ``await call(path, request, timeout)`` returns
    the answer's message bytes."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None,
                 user_agent: str = "kube2sky") -> None:
        self.host, self.port, self.context = host, port, context
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.user_agent = user_agent
        self._blocks: dict[str, bytes] = {}
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future | None = None
        self._closed = False

    async def _connection(self, deadline: float) -> _Connection:
        """A usable connection, made when there is none (one attempt at a time)."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ConnectionLost("the channel was closed")
            conn = self._conn
            if conn is not None and conn.usable:
                if len(conn.calls) < conn.max_streams:
                    return conn
                if conn.slot is None:
                    conn.slot = loop.create_future()
                await asyncio.wait_for(asyncio.shield(conn.slot), max(0.0, deadline - loop.time()))
                continue
            if conn is not None:
                conn.lost(conn.closed or "stream ids used up")  # a new connection starts over at 1
                self._conn = None
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            connecting = self._connecting
            try:
                await asyncio.wait_for(asyncio.shield(connecting), max(0.0, deadline - loop.time()))
            finally:
                if connecting.done() and self._connecting is connecting:
                    self._connecting = None

    async def _connect(self) -> None:
        conn = _Connection(self.context)
        await asyncio.get_running_loop().create_connection(
            lambda: conn, self.host, self.port, ssl=self.context,
            server_hostname=self.host if self.context is not None else None)
        if not conn.usable:
            conn.lost(conn.closed or "the server closed the connection")
            raise ConnectionLost(conn.closed or "the server closed the connection")
        if self._closed:
            conn.lost("the channel was closed")
            raise ConnectionLost("the channel was closed")
        self._conn = conn

    async def call(self, path: str, request: bytes, timeout: float) -> bytes:
        """One unary call: the answer's message (rules 4-6).

        Raises:
            CallError, ConnectionLost, OSError (cannot connect), asyncio.TimeoutError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._connection(deadline)
        block = self._blocks.get(path)
        if block is None:
            block = self._blocks[path] = header_block(
                self.authority, path, "https" if self.context is not None else "http", self.user_agent)
        future = loop.create_future()
        stream = conn.start(block, request, future)
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, asyncio.CancelledError):
            conn.give_up(stream)
            raise

    def close(self) -> None:
        """Close the connection; open calls raise ConnectionLost."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.lost("the channel was closed")
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None


def _detail(fields: dict[bytes, bytes]) -> str:
    message = fields.get(b"grpc-message")
    status = fields.get(b"grpc-status")
    parts = []
    if status is not None:
        parts.append(f"grpc-status {_text(status)}")
    if message:
        parts.append(_text(message))
    return f" ({': '.join(parts)})" if parts else ""
