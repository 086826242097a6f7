"""UDP in batches: many datagrams per system call (Linux ``recvmmsg``/``sendmmsg``).

Under load most of a Python server's own CPU per query is the per-datagram cost of the event
loop's datagram path (a callback, an address tuple each way). Reading and writing a batch per
call makes that cost per batch instead (bench/README.md, "Seventh round").

Rules:
1. Available only where it can be checked: Linux, with ``recvmmsg``, ``sendmmsg`` and
   ``sendto`` in the C library and the 64-bit ``msghdr`` layout this module computes with
   ctypes. Elsewhere ``available()`` is False and the server uses the event loop's datagram
   transport, which answers the same.
2. The socket is non-blocking and watched by the event loop (``add_reader``); everything runs
   on the loop's thread, so the handler and its caches see no concurrency. One readable event
   reads up to ``size`` datagrams in one call. The answers ``hits`` gives at once go out in one
   call; then the other datagrams are answered one by one and those answers go out in a
   second call, so a slow answer never holds back a quick one read with it.
3. Each datagram has a slot of 65,536 bytes, more than any UDP payload, so nothing is cut
   short. The slots are one private anonymous mapping: the kernel backs only the pages
   written (the first page or two of a slot: about 256 KiB for the default 64 slots), not the
   4 MiB they span, which only datagrams of 64 KiB in every slot would fill; a forked process
   gets its own copy. An answer is written over its own query in its slot and sent to the
   address it came from, which the kernel wrote beside the slot.
4. An answer that is not ready at once (a forwarded name) is sent when it is, with
   ``sendto``; a datagram the handler drops gets nothing.
5. Answers the kernel refuses because the send buffer is full wait, at most ``BACKLOG`` of
   them, and go out one by one as soon as the socket is writable, as the event loop's datagram
   transport does; beyond that they are dropped. A send refused for one address loses that
   answer only and the rest of the batch is still sent. Every lost answer is counted
   (skydns_dns_dropped_total, ``udp_send_failed``) and logged at debug level. A receive error
   other than "nothing to read" is logged (rate-limited) and reading goes on at the next
   readable event.
6. An exception while answering a batch (a bug: the handler catches what a packet can cause)
   loses that batch's answers only: they are counted (``udp_batch_failed``), the traceback is
   logged at most once per ``_ERROR_LOG_INTERVAL``, and the next batch is read as usual.
7. A ``fill`` function, when given, does what one readable event does (the compiled loop of
   skydns/_hits.c, transport rule 3g): fill(recvmmsg, sendto, fd, flags, ROUNDS, slots,
   receive headers, send headers, size, SLOT) reads batches, answers their hits in their slots
   and sends them one by one until the socket is empty, a batch has other datagrams or a send
   is refused, or ``ROUNDS`` batches were read, and returns (count, ready, sent, send_errno,
   misses, recv_errno) of the batch it stopped at. What it did not send is held or dropped as
   in rule 5 and the other datagrams are answered as in rule 2. The headers are C's ``struct
   mmsghdr``, so the server gives a fill only when its ``MMSGHDR`` equals this module's. An
   exception from fill loses at most the batch it was answering, counted once.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import errno
import logging
import mmap
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Datagrams read per call by default.
SIZE = 64
# Bytes per datagram slot: more than the largest UDP payload (rule 3).
SLOT = 65536
# Most batches one readable event reads with a compiled fill (rule 7).
ROUNDS = 16
# Most answers waiting for a full send buffer to drain (rule 5).
BACKLOG = 1024
# At most one receive-error (rule 5) and one batch-failure (rule 6) log line per this many seconds.
_ERROR_LOG_INTERVAL = 10.0

_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


# Bytes per receive or send header (struct mmsghdr): a compiled fill must agree (rule 7).
MMSGHDR = ctypes.sizeof(_MMsgHdr)


def _functions() -> tuple[Any, Any, Any] | None:
    """(recvmmsg, sendmmsg, sendto) from the C library, or None where rule 1 does not hold."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    # the offsets the fast loop reads and writes as 8- and 4-byte words
    if (ctypes.sizeof(_MMsgHdr) != 64 or _MsgHdr.namelen.offset != 8 or _MMsgHdr.len.offset != 56
            or ctypes.sizeof(_IoVec) != 16):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        recv, send, sendto = libc.recvmmsg, libc.sendmmsg, libc.sendto
    except (OSError, AttributeError):
        return None
    recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    recv.restype = ctypes.c_int
    send.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    send.restype = ctypes.c_int
    sendto.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p,
                       ctypes.c_uint32)
    sendto.restype = ctypes.c_ssize_t
    return recv, send, sendto


_FUNCTIONS = _functions()


def available() -> bool:
    """Whether batched UDP works here (rule 1)."""
    return _FUNCTIONS is not None


def _address(name: bytes, family: int) -> tuple:
    """The (host, port[, flowinfo, scope_id]) tuple of a raw sockaddr the kernel wrote."""
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET6:
        return (socket.inet_ntop(socket.AF_INET6, name[8:24]), port, int.from_bytes(name[4:8], "big"),
                int.from_bytes(name[24:28], sys.byteorder))
    return socket.inet_ntop(socket.AF_INET, name[4:8]), port


class Batcher:
    """Reads and answers a UDP socket in batches on the running loop (rules 2-6).

    hits(keys) answers what it can of a batch at once: keys are its datagrams after their first
    two bytes (the ID). It returns, for each in order, the answer after its ID (which is the
    query's); ``(tail, at, patch)``, that answer with the bytes of patch written over tail at
    offset at; or None, when answer(datagram) is to answer it: the whole answer, None (no
    answer) or an awaitable of either. drop(reason) counts a lost answer. fill, when given,
    answers the hits instead of hits (rule 7).
    """

    def __init__(self, sock: socket.socket, hits: Callable[[list[bytes]], list[Any]],
                 answer: Callable[[bytes], Any], drop: Callable[[str], None], size: int = SIZE,
                 fill: Callable[..., tuple] | None = None) -> None:
        assert _FUNCTIONS is not None, "batched UDP is not available here (udpbatch.available())"
        self._recv, self._send, self._sendto = _FUNCTIONS
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.hits = hits
        self.answer = answer
        self.drop = drop
        self.size = size
        self.fill = fill
        self.pending: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged: dict[str, float] = {}  # what was logged ("receive", "batch") -> when (_due)
        self._held: collections.deque[tuple[bytes, tuple]] = collections.deque()  # rule 5
        self._writing = False
        namelen = 28 if sock.family == socket.AF_INET6 else 16
        self._slots = mmap.mmap(-1, size * SLOT, flags=mmap.MAP_PRIVATE)  # a fork gets its own copy
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._slots))
        self._names = ctypes.create_string_buffer(size * 32)
        names = ctypes.addressof(self._names)
        self._riov = (_IoVec * size)()
        self._siov = (_IoVec * size)()
        self._rhdr = (_MMsgHdr * size)()
        self._shdr = (_MMsgHdr * size)()
        for i in range(size):
            self._riov[i].base = self._siov[i].base = base + i * SLOT
            self._riov[i].len = SLOT
            for hdrs, iovs in ((self._rhdr, self._riov), (self._shdr, self._siov)):
                hdr = hdrs[i].hdr
                hdr.name = names + 32 * i
                hdr.namelen = namelen
                hdr.iov = ctypes.addressof(iovs) + i * ctypes.sizeof(_IoVec)
                hdr.iovlen = 1
        self._slot_base = base
        # the functions a compiled fill calls (rule 7), set by start(): tests put stand-ins there
        self._recv_at = self._sendto_at = 0
        self._name_base = names
        self._rptr = ctypes.addressof(self._rhdr)
        self._sptr = ctypes.addressof(self._shdr)
        # word views of the headers and iovecs, for the loop (offsets checked in _functions)
        self._rwords = memoryview(self._rhdr).cast("B").cast("I")  # msg_len at 16*i + 14
        self._swords = memoryview(self._shdr).cast("B").cast("Q")  # name at 8*j, namelen at 8*j + 1
        self._siovw = memoryview(self._siov).cast("B").cast("Q")  # base at 2*j, len at 2*j + 1
        self._namelen = namelen
        self._starts = tuple(i * SLOT + 2 for i in range(size))  # where each datagram's bytes after the ID begin

    def start(self) -> None:
        self._recv_at = ctypes.cast(self._recv, ctypes.c_void_p).value or 0
        self._sendto_at = ctypes.cast(self._sendto, ctypes.c_void_p).value or 0
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        """Stop reading and close the socket (as closing a datagram transport does)."""
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            if self._writing:
                self._loop.remove_writer(self.fd)
            self._loop = None
        self._writing = False
        if self._held:
            for _ in self._held:
                self.drop("udp_send_failed")
            self._held.clear()
        self.sock.close()

    def _readable(self) -> None:
        if self.fill is not None:
            self._serve_compiled()
            return
        count = self._recv(self.fd, self._rptr, self.size, _MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0:
                self._receive_error(ctypes.get_errno())
            return
        try:
            self._serve(count)
        except Exception:  # noqa: BLE001 - a bug here must not stop the reading (rule 6)
            self._failed(count, count)

    def _serve(self, count: int) -> None:
        """Answer the count datagrams just read: the hits at once, then the rest (rule 2)."""
        slots = self._slots
        rwords = self._rwords
        starts = self._starts
        outs = self.hits([slots[starts[i]:starts[i] + rwords[16 * i + 14] - 2] for i in range(count)])
        siovw = self._siovw
        ready = 0
        misses = []
        for i, out in enumerate(outs):
            kind = out.__class__
            if kind is bytes:
                tail, patch = out, None
            elif kind is tuple:  # (tail, at, patch): patch written over the tail at offset at
                tail, at, patch = out
            else:
                misses.append(i)
                continue
            start = starts[i]
            size = len(tail)
            slots[start:start + size] = tail
            if patch is not None:
                slots[start + at:start + at + len(patch)] = patch
            if ready != i:
                self._swords[8 * ready] = self._name_base + 32 * i
                siovw[2 * ready] = self._slot_base + start - 2
            siovw[2 * ready + 1] = size + 2
            ready += 1
        if ready:
            self._flush(ready)
        if misses:
            self._misses(misses)
        if ready != count:
            self._reset(count)

    def _serve_compiled(self) -> None:
        """Rule 7: batches read, their hits answered and sent by fill; then what it left."""
        try:
            count, ready, sent, code, misses, recv_code = self.fill(
                self._recv_at, self._sendto_at, self.fd, _MSG_DONTWAIT, ROUNDS, self._slots, self._rhdr,
                self._shdr, self.size, SLOT)
        except Exception:  # noqa: BLE001 - a bug here must not stop the reading (rule 6)
            self._failed(0, 1)
            return
        if recv_code:
            self._receive_error(recv_code)
        try:
            if sent < ready:
                self._flush(ready, sent, code)
            if misses:
                self._misses(misses)
        except Exception:  # noqa: BLE001 - rule 6
            self._failed(count, count - sent)

    def _failed(self, count: int, lost: int) -> None:
        """Rule 6, from an exception handler: answering a batch of count datagrams (0: not
        known) failed and ``lost`` of its answers did not go out. The send headers go back to
        their slots, the lost answers are counted and the traceback is logged, rate-limited."""
        self._reset(count)
        for _ in range(lost):
            self.drop("udp_batch_failed")
        if self._due("batch"):
            if count:
                logger.exception("answering a batch of %d UDP datagrams failed; they got no answer", count)
            else:
                logger.exception("answering a batch of UDP datagrams failed; it got no answer")

    def _misses(self, misses: list[int]) -> None:
        """Answer datagrams misses one by one and send what is ready (rule 2); every send
        header used is written here."""
        slots, siovw, swords = self._slots, self._siovw, self._swords
        ready = 0
        for i in misses:
            out = self._answer(i)
            if out is None:
                continue
            start = i * SLOT
            slots[start:start + len(out)] = out
            swords[8 * ready] = self._name_base + 32 * i
            siovw[2 * ready] = self._slot_base + start
            siovw[2 * ready + 1] = len(out)
            ready += 1
        if ready:
            self._flush(ready)

    def _answer(self, i: int) -> bytes | None:
        """The whole answer to datagram i, a miss (rule 2): None when there is none, or when it
        is not ready yet (it is sent when it is, rule 4)."""
        data = self._slots[self._starts[i] - 2:self._starts[i] + self._rwords[16 * i + 14] - 2]
        out = self.answer(data)
        if out is None or out.__class__ is bytes:
            return out
        self._later(out, i)
        return None

    def _reset(self, count: int) -> None:
        """Send headers 0..count-1 back to their own slots (after a batch with gaps)."""
        swords, siovw = self._swords, self._siovw
        for j in range(count):
            swords[8 * j] = self._name_base + 32 * j
            siovw[2 * j] = self._slot_base + j * SLOT

    def _flush(self, count: int, start: int = 0, code: int = 0) -> None:
        """Send prepared answers start..count-1; a refused one is held or dropped (rule 5). code,
        when given, is why the send of answer start was refused already."""
        while start < count:
            if not code:
                sent = self._send(self.fd, self._sptr + 64 * start, count - start, _MSG_DONTWAIT)
                if sent > 0:
                    start += sent
                    continue
                code = ctypes.get_errno()
            if code == errno.EINTR:
                code = 0
                continue
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                self._hold(start, count)
                return
            self.drop("udp_send_failed")
            logger.debug("UDP send failed: %s", errno.errorcode.get(code, code))
            start += 1
            code = 0

    def _hold(self, start: int, count: int) -> None:
        """Queue prepared answers start..count-1 until the socket is writable (rule 5)."""
        held = self._held
        for j in range(start, count):
            if len(held) >= BACKLOG:
                self.drop("udp_send_failed")
                continue
            name = ctypes.string_at(self._swords[8 * j], self._namelen)
            data = ctypes.string_at(self._siovw[2 * j], self._siovw[2 * j + 1])
            held.append((data, _address(name, self.family)))
        if held and not self._writing and self._loop is not None:
            self._writing = True
            self._loop.add_writer(self.fd, self._drain)

    def _drain(self) -> None:
        held = self._held
        while held:
            data, addr = held[0]
            try:
                self.sock.sendto(data, _MSG_DONTWAIT, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.drop("udp_send_failed")
                logger.debug("UDP send to %s failed: %s", addr, exc)
            held.popleft()
        self._writing = False
        if self._loop is not None:
            self._loop.remove_writer(self.fd)

    def _later(self, pending: Any, i: int) -> None:
        name = ctypes.string_at(self._name_base + 32 * i, self._namelen)
        task = asyncio.ensure_future(self._finish(pending, _address(name, self.family)))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _finish(self, pending: Any, addr: tuple) -> None:
        out = await pending
        if out is None or self.sock.fileno() < 0:
            return
        try:
            self.sock.sendto(out, _MSG_DONTWAIT, addr)
        except OSError as exc:
            self.drop("udp_send_failed")
            logger.debug("UDP send to %s failed: %s", addr, exc)

    def _receive_error(self, code: int) -> None:
        if code not in _AGAIN and self._due("receive"):
            logger.warning("UDP receive failed: %s", errno.errorcode.get(code, code))

    def _due(self, what: str) -> bool:
        """Whether a log line about ``what`` may be written now (rules 5 and 6: at most one per
        ``_ERROR_LOG_INTERVAL``); if so, the time is noted."""
        now = time.monotonic()
        if now - self._logged.get(what, float("-inf")) < _ERROR_LOG_INTERVAL:
            return False
        self._logged[what] = now
        return True
