"""The bytes of gRPC calls on an HTTP/2 connection of their own, one call at a time (RFC 9113,
RFC 7541, gRPC over HTTP/2), client side: what the etcd mirror writes (the watch, and the
Range calls of a load) and a decoder of what etcd sends back.

PURE: values in, values out; the connection itself is ``etcdwatch``'s. grpcio costs about
0.6 ms of CPU for each message it hands to asyncio (its poller threads and the aio call
machinery, measured in bench/README.md "CPU per watch event"); this decoder is a few
microseconds per message, called from the event loop's ``data_received``.

Rules of this module:

1. The client side is written by ``preface()`` (connection preface, SETTINGS, connection
   WINDOW_UPDATE), ``request_headers()`` (one HEADERS frame opening the call's stream, 1 by
   default, no CONTINUATION) and ``message()`` (one length-prefixed, uncompressed gRPC message
   in one DATA frame; END_STREAM only when asked, for a unary call: a streaming call stays
   open for more requests). Flow-control frames are ``window_update()``; ``settings_ack()``
   and ``ping_ack()`` answer the peer's. One call is open at a time: the first on stream 1,
   each next one (``Decoder.next_call()``, after the last one ended by its trailers) on the
   next odd stream id.
2. The client announces the largest window there is (2**31 - 1) for the connection and the
   stream, and the default frame size (16,384 bytes): a bigger frame is a protocol error.
   The peer's windows and settings are reported to the caller, which keeps its own sends
   within them.
3. ``Decoder.feed(data)`` takes any slicing of the peer's bytes and returns what they
   complete, in order, as ``(kind, value)`` pairs: ``MESSAGE`` (the bytes of one gRPC
   message of the call's stream), ``SETTINGS`` (a dict id -> value, to be acknowledged), ``PING``
   (8 bytes, to be acknowledged), ``WINDOW`` ((stream id, increment)) and ``END`` (text: why
   the call is over). ``Decoder.consumed`` counts the flow-controlled bytes taken (DATA
   payloads, padding included) for the caller's WINDOW_UPDATEs.
4. The call is over (``END``) on: trailers (HEADERS with END_STREAM; the text carries
   grpc-status and grpc-message, and ``Decoder.status`` the grpc-status, "" when there was
   none), a trailers-only answer, DATA with END_STREAM, RST_STREAM of the call's stream, GOAWAY
   (its error code and debug text). Nothing is decoded after END; only trailers leave the
   connection usable for ``next_call()`` (``Decoder.reusable``).
5. Anything malformed raises ``ProtocolError`` with what was wrong and nothing else is
   returned: a frame longer than the announced maximum, bad padding, a SETTINGS or PING or
   WINDOW_UPDATE of the wrong size or stream, a SETTINGS_MAX_FRAME_SIZE out of range, a zero
   window increment, DATA or HEADERS for a
   stream other than the call's, a header block interrupted before CONTINUATION ends it, PUSH_PROMISE
   (push is disabled), an HPACK error, response headers that are not ``:status 200`` and
   ``application/grpc``, a compressed gRPC message (none was asked for), a message before
   the response headers. PRIORITY and unknown frame types are skipped (RFC 9113 5.5). The
   checks that do not depend on the call (``next_frame``, ``HeaderBlocks``, ``control_frame``,
   ``reset_error``, ``goaway``) are shared with kube2sky's transactions (``kube2sky.h2call``).
6. Header blocks go through one HPACK decoder for the whole connection (its dynamic table
   is connection state), capped at ``MAX_HEADER_LIST`` bytes.
"""

from __future__ import annotations

import struct
import urllib.parse

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS_FRAME, PUSH_PROMISE, PING_FRAME, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
STREAM = 1  # the stream of a connection's first call
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
MAX_FRAME = 16_384
MAX_HEADER_LIST = 65_536
# SETTINGS identifiers (RFC 9113 6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)

# What feed() returns (rule 3).
MESSAGE, SETTINGS, PING, WINDOW, END = "message", "settings", "ping", "window", "end"

_HEAD = struct.Struct(">I")  # 24-bit length + type, read as one word then split
_ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
           4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
           8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
           12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


class ProtocolError(Exception):
    """The peer's bytes are not HTTP/2 + gRPC as this client speaks it (rule 5)."""


# -- the client side (rule 1) ------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: 9-byte header + payload."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def preface() -> bytes:
    """What the client sends first: preface, SETTINGS (no push, largest window), and the
    connection window raised to the largest (rule 2)."""
    settings = struct.pack(">HIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, MAX_WINDOW)
    return (PREFACE + frame(SETTINGS_FRAME, 0, 0, settings)
            + window_update(0, MAX_WINDOW - DEFAULT_WINDOW))


def request_headers(authority: str, path: str, scheme: str, user_agent: str = "kube-skydns",
                    stream: int = STREAM) -> bytes:
    """The HEADERS frame opening ``stream`` for a gRPC call of ``path``."""
    block = hpack.Encoder().encode([
        (":method", "POST"), (":scheme", scheme), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", user_agent),
    ])
    if len(block) > MAX_FRAME:
        raise ValueError("request headers longer than one frame")
    return frame(HEADERS, END_HEADERS, stream, block)


def message(payload: bytes, stream: int = STREAM, end_stream: bool = False) -> bytes:
    """One gRPC message in one DATA frame (not compressed; the stream kept open unless
    ``end_stream``: the last request of a call)."""
    if len(payload) + 5 > MAX_FRAME:
        raise ValueError("request message longer than one frame")
    return frame(DATA, END_STREAM if end_stream else 0, stream,
                 b"\0" + len(payload).to_bytes(4, "big") + payload)


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def settings_ack() -> bytes:
    return frame(SETTINGS_FRAME, ACK, 0)


def ping_ack(payload: bytes) -> bytes:
    return frame(PING_FRAME, ACK, 0, payload)


# -- the server side (rules 3-6) ---------------------------------------------------------------


class Decoder:
    """Frames and gRPC messages of the call's stream from the peer's bytes, in order (rule 3)."""

    def __init__(self) -> None:
        self.stream = STREAM  # the call's stream (rule 1)
        self.status: str | None = None  # grpc-status of the call's trailers (rule 4)
        self.reusable = False  # the call ended by its trailers: next_call() may follow
        self._buf = b""
        self._blocks = HeaderBlocks()
        # A message of the call's stream begun in an earlier frame: its 5-byte prefix while that
        # is not whole, then the pieces of its body, how many bytes they hold, and its length.
        self._head = b""
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self._headers_seen = False  # the response headers came
        self.ended = False
        self.consumed = 0  # flow-controlled bytes taken (rule 3)

    def next_call(self) -> int:
        """Start the next call on this connection (rule 1); its stream id.

        Raises:
            ProtocolError: the last call did not end by its trailers.
        """
        if not self.reusable:
            raise ProtocolError("the connection's last call is not over by its trailers")
        self.stream += 2
        self.status = None
        self.reusable = False
        self.ended = False
        self._headers_seen = False
        self._head, self._parts, self._have, self._need = b"", [], 0, 0
        return self.stream

    def pending(self) -> list[tuple[str, object]]:
        """What the bytes kept since the last call's end complete for the current call."""
        return self.feed(b"")

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        """Decode data (any slice of the byte stream); ProtocolError when it is malformed."""
        if (self._headers_seen and not self._buf and not self._need and not self._head and self._blocks.open is None
                and len(data) >= 14 and data[3] == DATA and data[4] == 0 and data[9] == 0
                and int.from_bytes(data[5:9], "big") == self.stream and not self.ended):
            # The usual case, one whole DATA frame of stream 1 holding one whole message: the
            # same result as the general path below, without its buffering.
            length = int.from_bytes(data[0:3], "big")
            if length + 9 == len(data) and length <= MAX_FRAME and int.from_bytes(data[10:14], "big") + 5 == length:
                self.consumed += length
                return [(MESSAGE, data[14:])]
        out: list[tuple[str, object]] = []
        if self.ended:
            if self.reusable:  # kept for the next call (rule 4)
                self._buf += data
            return out
        buf = self._buf + data if self._buf else data
        size = len(buf)
        at = 0
        while (found := next_frame(buf, at)) is not None:
            kind, flags, stream, payload, at = found
            self._blocks.check(kind)
            self._frame(kind, flags, stream, payload, out)
            if self.ended:
                if not self.reusable:
                    at = size
                break
        self._buf = buf[at:] if at < size else b""
        return out

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes, out: list) -> None:
        if kind == DATA:
            self._stream_frame(stream, "DATA")
            self.consumed += len(payload)
            if flags & PADDED:
                payload = _unpad(payload)
            if not self._headers_seen:
                raise ProtocolError("DATA before the response headers")
            self._data(payload, out)
            if flags & END_STREAM:
                self._end("stream ended without trailers", out)
        elif kind == HEADERS or kind == CONTINUATION:
            if kind == HEADERS:
                self._stream_frame(stream, "HEADERS")
            block = self._blocks.frame(kind, flags, stream, payload)
            if block is not None:
                self._headers(block[1], block[2], out)
        elif control_frame(kind, flags, stream, payload, out):
            pass
        elif kind == RST_STREAM:
            if reset_error(stream, payload) and stream == self.stream:
                self._end(f"stream reset by etcd ({_error(payload)})", out)
        elif kind == GOAWAY:
            self._end(f"connection closed by etcd ({goaway(stream, payload)[1]})", out)
        # PRIORITY and unknown kinds: skipped (rule 5)

    def _stream_frame(self, stream: int, what: str) -> None:
        if stream != self.stream:
            raise ProtocolError(f"{what} on stream {stream}, not on the call's stream {self.stream}")

    def _headers(self, fields: dict[bytes, bytes], end_stream: bool, out: list) -> None:
        if not self._headers_seen:
            status = fields.get(b":status")
            if status != b"200":
                raise ProtocolError(f"HTTP status {_text(status) if status else 'missing'}, not 200"
                                    + _grpc_detail(fields))
            kind = fields.get(b"content-type", b"")
            if not kind.startswith(b"application/grpc"):
                raise ProtocolError(f"content-type {_text(kind)!r}, not application/grpc")
            self._headers_seen = True
            if not end_stream:
                return
        elif not end_stream:
            raise ProtocolError("a second header block that does not end the stream")
        status = fields.get(b"grpc-status")
        text = f"grpc-status {_text(status)}" if status is not None else "no grpc-status"
        self._end(f"call ended by etcd ({text}{_grpc_detail(fields)})", out)
        self.status = _text(status) if status is not None else ""
        self.reusable = True

    def _data(self, payload: bytes, out: list) -> None:
        if self._need:  # the body of a message begun in an earlier frame: joined once, when whole
            self._parts.append(payload)
            self._have += len(payload)
            if self._have < self._need:
                return
            body, need = b"".join(self._parts), self._need
            self._parts, self._have, self._need = [], 0, 0
            if len(body) == need:
                out.append((MESSAGE, body))
                return
            out.append((MESSAGE, body[:need]))
            payload = body[need:]
        elif self._head:
            payload, self._head = self._head + payload, b""
        size = len(payload)
        at = 0
        while size - at >= 5:
            if payload[at]:
                raise ProtocolError(f"gRPC message flag {payload[at]}: compressed, which was not asked for")
            length = int.from_bytes(payload[at + 1:at + 5], "big")
            end = at + 5 + length
            if end > size:  # the rest of the body comes in later frames
                self._parts, self._have, self._need = [payload[at + 5:]], size - at - 5, length
                return
            out.append((MESSAGE, payload[at + 5:end]))
            at = end
        if at < size:
            self._head = payload[at:]

    def _end(self, why: str, out: list) -> None:
        self.ended = True
        out.append((END, why))


# -- frame checks shared with kube2sky.h2call (any stream, any call) -------------------------------

def next_frame(buf: bytes, at: int) -> tuple[int, int, int, bytes, int] | None:
    """The frame starting at ``at`` in buf as (type, flags, stream, payload, where the next one
    starts); None while it is incomplete. ProtocolError for a frame over MAX_FRAME (rule 2)."""
    if len(buf) - at < 9:
        return None
    word, = _HEAD.unpack_from(buf, at)
    length = word >> 8
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes, more than the {MAX_FRAME} announced")
    end = at + 9 + length
    if end > len(buf):
        return None
    return word & 0xFF, buf[at + 4], int.from_bytes(buf[at + 5:at + 9], "big") & 0x7FFFFFFF, buf[at + 9:end], end


class HeaderBlocks:
    """A connection's header blocks: a HEADERS frame and its CONTINUATION frames assembled
    (RFC 9113 6.10), capped at MAX_HEADER_LIST bytes, and decoded by one HPACK decoder (its
    dynamic table is connection state; rule 6)."""

    def __init__(self) -> None:
        self.open: bytearray | None = None  # a block waiting for CONTINUATION
        self._stream = 0
        self._end_stream = False  # END_STREAM of the HEADERS that opened the block
        self._hpack = hpack.Decoder()
        self._hpack.max_header_list_size = MAX_HEADER_LIST

    def check(self, kind: int) -> None:
        """A frame may come next: only CONTINUATION while a block is open."""
        if self.open is not None and kind != CONTINUATION:
            raise ProtocolError("a header block was interrupted before its end")

    def frame(self, kind: int, flags: int, stream: int, payload: bytes) -> tuple[int, dict[bytes, bytes], bool] | None:
        """Take a HEADERS or CONTINUATION frame: (stream, fields, END_STREAM) when it completes
        a block, else None."""
        if kind == HEADERS:
            payload = header_fragment(flags, payload)
            self._end_stream = bool(flags & END_STREAM)
            if not flags & END_HEADERS:
                self.open, self._stream = bytearray(payload), stream
                return None
            block = bytes(payload)
        else:
            if self.open is None or stream != self._stream:
                raise ProtocolError("CONTINUATION without a header block to continue")
            self.open += payload
            if len(self.open) > MAX_HEADER_LIST:
                raise ProtocolError(f"header block longer than {MAX_HEADER_LIST} bytes")
            if not flags & END_HEADERS:
                return None
            block, self.open = bytes(self.open), None
        try:
            return stream, dict(self._hpack.decode(block, raw=True)), self._end_stream
        except hpack.HPACKError as exc:
            raise ProtocolError(f"HPACK: {exc}") from exc
        except (ValueError, IndexError, UnicodeError, TypeError) as exc:  # not an HPACKError in some versions
            raise ProtocolError(f"HPACK: {exc!r}") from exc


def header_fragment(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's header block fragment: padding and priority fields taken off."""
    if flags & PADDED:
        payload = _unpad(payload)
    if flags & PRIORITY_FLAG:
        if len(payload) < 5:
            raise ProtocolError("HEADERS too short for its priority fields")
        payload = payload[5:]
    return payload


def control_frame(kind: int, flags: int, stream: int, payload: bytes, out: list) -> bool:
    """SETTINGS, PING, WINDOW_UPDATE and PUSH_PROMISE, checked (rule 5); what the caller must
    answer or apply is appended to ``out`` (SETTINGS, PING, WINDOW events). False for any
    other kind of frame."""
    if kind == SETTINGS_FRAME:
        if stream != 0:
            raise ProtocolError("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError("SETTINGS acknowledgement with a payload")
            return True
        if len(payload) % 6:
            raise ProtocolError(f"SETTINGS of {len(payload)} bytes, not a multiple of 6")
        values = dict(struct.iter_unpack(">HI", payload))
        if values.get(INITIAL_WINDOW_SIZE, 0) > MAX_WINDOW:
            raise ProtocolError("SETTINGS_INITIAL_WINDOW_SIZE above 2**31-1")
        if not MAX_FRAME <= values.get(MAX_FRAME_SIZE, MAX_FRAME) <= 2**24 - 1:
            raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {values[MAX_FRAME_SIZE]} out of range")
        # HEADER_TABLE_SIZE is the size of *our* encoder's table: it indexes nothing
        out.append((SETTINGS, values))
    elif kind == PING_FRAME:
        if stream != 0 or len(payload) != 8:
            raise ProtocolError("PING must be 8 bytes on stream 0")
        if not flags & ACK:
            out.append((PING, bytes(payload)))
    elif kind == WINDOW_UPDATE:
        if len(payload) != 4:
            raise ProtocolError(f"WINDOW_UPDATE of {len(payload)} bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if increment == 0:
            raise ProtocolError("WINDOW_UPDATE of 0")
        out.append((WINDOW, (stream, increment)))
    elif kind == PUSH_PROMISE:
        raise ProtocolError("PUSH_PROMISE, but push is disabled")
    else:
        return False
    return True


def reset_error(stream: int, payload: bytes) -> str:
    """The error name of a RST_STREAM frame (checked)."""
    if len(payload) != 4 or stream == 0:
        raise ProtocolError("RST_STREAM must be 4 bytes on a stream")
    return _error(payload)


def goaway(stream: int, payload: bytes) -> tuple[int, str]:
    """(last stream id, "GOAWAY <error>[: <debug text>]") of a GOAWAY frame (checked)."""
    if len(payload) < 8 or stream != 0:
        raise ProtocolError("GOAWAY must be 8 bytes or more on stream 0")
    debug = bytes(payload[8:]).decode("utf-8", "replace").strip()
    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
    return last, f"GOAWAY {_error(payload[4:8])}{': ' + debug if debug else ''}"


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolError("PADDED frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError(f"padding of {pad} bytes in a {len(payload)}-byte payload")
    return payload[1:len(payload) - pad]


def _error(code: bytes) -> str:
    number = int.from_bytes(code, "big")
    return _ERRORS.get(number, f"error {number}")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _grpc_detail(fields: dict[bytes, bytes]) -> str:
    detail = fields.get(b"grpc-message")
    return f": {urllib.parse.unquote(_text(detail))}" if detail else ""
