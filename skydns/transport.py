"""DNS over UDP and TCP: bytes in, bytes out, with a cache of encoded answers in front.

Rules:
1. No packet can kill the server. ``Handler.handle`` catches every exception, counts it in
   skydns_panics_total, logs it (rate-limited) and answers SERVFAIL when the header is readable.
2. Dropped without an answer: packets shorter than a DNS header (12 bytes) and responses
   (QR=1), so two servers can never ping-pong. An opcode other than QUERY gets NOTIMP (header
   only); anything else unreadable gets FORMERR.
3. The hot path (DESIGN section 5): ``wire.parse`` -> cache of encoded answers -> ``wire.patch``.
   dnspython parses and renders only on a miss or for unusual messages. The cache
   (``anscache``) records what each answer read from the store and drops exactly the answers a
   store change can affect (the store's ``on_change`` hook), so a changed record is served on
   the very next query and an unrelated change costs nothing; the SOA serial in negative
   answers is written in on the way out. A store without the hook (a stand-in view) drops the
   whole cache whenever its ``generation`` moves.
   3a. In front of it, an exact cache keyed by the query's bytes after the ID (so the same name
   spelling, flags and EDNS bytes) holds the already patched answer: a repeated query costs a
   dict lookup and one concatenation of its ID with the stored answer. Filled only from
   queries ``wire.parse`` accepted; an exact hit whose entry was dropped is a miss, which
   reuses what the same bytes parsed to (only the ID is read again).
   3c. A miss with a plain query is answered without dnspython: ``answering.plan`` (the same
   semantics as ``answering.answer``) rendered by ``encode``; whatever that renderer does not
   write (other types, truncation, forwarded names, errors) takes the dnspython path.
   3d. A miss of an A/AAAA query whose dropped entry was one address record of the name, or
   NODATA beside an address of the other family, is redone from the log of its reads
   (answering rule 16): the reads are made again and, when only the name's record changed in
   its address or TTL, the old message gets the new TTL and address written in (or is the same
   message); anything else is planned again. It starts from the exact-cache entry of the same
   bytes, so nothing is parsed and that entry's answer (after the ID), cache key and metric
   counters are reused.
   3e. The caches hold at most ``cache_bytes`` between them, whatever the answers are: the
   answer cache 5/8 of it (anscache rule 4), the exact cache of each protocol 3/16 (an exact
   entry costs about a third of an answer cache entry), each entry counted as its bytes plus
   what the entry itself costs (``EXACT_BYTES``); the oldest entries go first. The default
   holds about 4,700 usual answers (the pod query mix of 1,000 names, 4,000 answers, fits);
   without a byte bound, 10,000 answers of a headless service's 100 SRV targets held 150 MB.
   3f. UDP datagrams read together (``udpbatch``) are answered in two passes: ``batch_hits``
   answers the exact hits whose entry is alive and whose metric counters are known, in one
   loop with no call per datagram, and those answers go out at once; then ``handle`` answers
   the others one by one, so a slow miss never holds back a hit read with it. The bytes, the
   rotation and the counters are what ``handle`` gives one datagram at a time in that order
   (tests/skydns/test_udpbatch.py proves it by difference). When the mirror moved since a
   negative answer was filed, its new SOA serial is written into the datagram's slot as the
   answer is copied there and the entry is left as it is: under a steady stream of writes
   nearly every hit of a negative answer sees a new serial, and making a new answer each time
   cost more than the rest of the hit. A hit is counted with the time the hits of its batch
   took as its latency, since they were read together and go out together.
   3g. Where ``skydns._hits`` is built (skydns/_hits.c, optional: setup.py builds it when a C
   compiler is there) and ``--compiled-hits`` is on, the server's batcher reads, answers and
   sends the hits in C (``serve_hits``): the same checks, bytes, rotation and counters as
   ``batch_hits`` (tests/skydns/test_udpbatch.py proves it by difference), with no Python per
   datagram. It reads until the socket is empty or a batch has a datagram it does not answer,
   which ``handle`` then answers as in rule 3f. Only the caches' hits run in C; every answer
   is still made by the Python paths.
   3b. A store change under ``arpa`` tells the forwarder to forget what it cached for that
   reverse name (the name may have become local); nothing else in the store touches forwarded
   answers.
4. Only ``answering.Reply`` with ``cacheable`` set is cached. Forwarded and resolved answers
   go through the forwarder (it keeps its own TTL cache) and are never cached here.
5. Size limits: UDP 512 without EDNS, else min(client payload, our payload) and at least 512;
   TCP 65535. Too big: additional RRsets are dropped first (no TC); if answer and authority
   still do not fit, as many whole records of them as fit are sent, in order, with TC set and
   no additional (as CoreDNS and kube-dns do), so clients that never retry over TCP (busybox
   nslookup, musl before 1.2.4) still get addresses.
6. Round robin: A/AAAA RRsets with several records are rotated per response, cached
   answers included (a few rotations are cached); RRset order, so CNAMEs first, never changes.
6a. TCP: a connection is closed ``idle_timeout`` after its last activity (accepted, or a
   query answered), and after ``idle_timeout`` with answers it does not read (its unsent
   answers are dropped), so a slow or stuck client holds one of ``max_connections`` slots for
   a bounded time. A frame the handler drops (zero-length, a response, shorter than a header)
   is not activity: a client sending only those is closed on time. When every slot is taken, a
   new connection closes the least recently active one (counted as ``tcp_evicted``) instead of
   being turned away, so idle or trickling clients can never lock TCP out.
6b. The TCP listen backlog is ``TCP_BACKLOG`` (the kernel caps it at net.core.somaxconn), also
   after the event loop takes the socket over. The UDP receive buffer is raised to the size
   asked (``bind(rcvbuf=...)``, default 4 MiB), capped by the kernel (net.core.rmem_max); a
   smaller buffer is logged.
7. Sockets are bound before the event loop serves anything, so "address in use" is known at once
   (``ListenError``). SO_REUSEPORT is set only when several workers share the port.
8. Until the store has been loaded once, names in our zones are answered SERVFAIL (not cached),
   so a client tries another server instead of caching a false NXDOMAIN; forwarding works.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import io
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.renderer
import dns.rrset

from skydns import anscache, answering, encode, forwarding, kept, metrics, store, udpbatch, wire
from skydns import settings as settings_mod

try:  # the compiled twin of batch_hits' loop (rule 3g); optional, setup.py builds it when it can
    from skydns import _hits
except ImportError:  # pragma: no cover - a build without a C compiler
    _hits = None

logger = logging.getLogger(__name__)

# Most encoded answers kept; the oldest entry goes first when full.
CACHE_SIZE = 10000
# Most bytes the answer cache and the exact-bytes caches hold between them (rule 3e).
CACHE_BYTES = 16 << 20
# What an exact-bytes entry costs besides its key and answer tails (rule 3e; tracemalloc).
EXACT_BYTES = 600
# Most rotations of one round-robin answer kept in the cache.
ROTATIONS = 8
# A TCP connection with no complete query for this long is closed, seconds.
TCP_IDLE_TIMEOUT = 10.0
# Most TCP connections open at once; a new one beyond it closes the least recently active one.
TCP_MAX_CONNECTIONS = 1000
# Pending connections the kernel queues before we accept them (rule 6b).
TCP_BACKLOG = 1024
# UDP receive buffer asked by default, bytes (rule 6b).
UDP_RCVBUF = 4 * 1024 * 1024
# At most one "exception in packet handler" log line per this many seconds.
_PANIC_LOG_INTERVAL = 10.0

_ROTATE_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
# The TC bit within the first flag byte of a message (offset 2).
_TC_BYTE = dns.flags.TC >> 8
# The fewest bytes one resource record takes (a root owner, type, class, TTL, rdata length):
# more records than fit at this size mean truncation without trying to render them all.
_MIN_RR = 11
# Renderer sections of answer and authority, by the index render() gives them.
_SECTIONS = (dns.renderer.ANSWER, dns.renderer.AUTHORITY)
_CACHE = "answers"


class ListenError(Exception):
    """The DNS listen address cannot be bound (in use, not local, no permission)."""


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only error answer (FORMERR, SERVFAIL) to data; None if data has no header.

    When data is a QUERY (opcode 0) holding one readable question (``wire.question_end``), the
    question is echoed too, whatever follows it (two OPTs, a bad option, trailing bytes). Other
    opcodes get the header only (an UPDATE's first section is a zone, not a question).
    """
    head = wire.formerr(data)
    if head is None:
        return None
    head = head[:3] + bytes(((head[3] & 0xF0) | rcode,)) + head[4:]
    question_end = None if data[2] & 0x78 else wire.question_end(data)
    if question_end is None:
        return head
    return head[:4] + b"\x00\x01" + head[6:] + data[wire.HEADER_SIZE:question_end]


def render(message: dns.message.Message, limit: int) -> bytes:
    """Encode message in at most limit bytes (rule 5): additional dropped first, then whole records and TC."""
    records = [(index, rrset, rdata)
               for index, section in enumerate((message.answer, message.authority))
               for rrset in section for rdata in rrset]
    if wire.HEADER_SIZE + _MIN_RR * len(records) <= limit or message.flags & dns.flags.TC:
        try:
            # want_shuffle=False: dnspython would shuffle every RRset; the order is ours (rule 6)
            out = message.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)
        except dns.exception.TooBig:
            return _header_only(message)
        if not out[2] & _TC_BYTE or message.flags & dns.flags.TC:
            return out  # answer and authority whole (some additional RRsets may be gone)
    # Too big (surely, or dnspython cut at an RRset boundary: ANSWER: 0 for one big RRset):
    # the longest run of whole records of answer then authority that fits, no additional, TC.
    saved = message.answer, message.authority, message.additional, message.flags
    try:
        message.flags |= dns.flags.TC
        message.additional = []
        for count in range(_fitting(message, records, limit), -1, -1):
            message.answer, message.authority = _regroup(records[:count])
            try:
                return message.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                continue  # the estimate was one record too generous (never seen; cheap anyway)
        return _header_only(message)
    finally:
        message.answer, message.authority, message.additional, message.flags = saved


def _fitting(message: dns.message.Message, records: list, limit: int) -> int:
    """How many of records fit in limit after the question and the OPT: one pass, record by record."""
    renderer = dns.renderer.Renderer(message.id, message.flags, limit, message.origin)
    if message.opt is not None:
        opt = io.BytesIO()
        message.opt.to_wire(opt)
        renderer.reserve(opt.tell())
    try:
        for question in message.question:
            renderer.add_question(question.name, question.rdtype, question.rdclass)
    except dns.exception.TooBig:
        return 0
    count = 0
    for index, rrset, rdata in records:
        single = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
        single.add(rdata, rrset.ttl)
        try:
            renderer.add_rrset(_SECTIONS[index], single)
        except dns.exception.TooBig:
            break
        count += 1
    return count


def _regroup(records: list[tuple[int, dns.rrset.RRset, Any]]) -> tuple[list, list]:
    """(section index, RRset, rdata) triples back into answer and authority RRsets, in order."""
    sections: tuple[list, list] = ([], [])
    source = part = None
    for index, rrset, rdata in records:
        if rrset is not source:
            source = rrset
            part = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
            part.update_ttl(rrset.ttl)
            sections[index].append(part)
        part.add(rdata)
    return sections


def _header_only(message: dns.message.Message) -> bytes:
    """Not even the question and OPT fit (a huge qname against a 512-byte limit): TC alone."""
    short = dns.message.Message(id=message.id)
    short.flags = message.flags | dns.flags.TC
    return short.to_wire()


def _rotated(message: dns.message.Message, turn: int) -> list[tuple[int, dns.rrset.RRset]]:
    """Replace each multi-record A/AAAA answer RRset by its turn-th rotation; returns the originals."""
    saved = []
    for index, rrset in enumerate(message.answer):
        if rrset.rdtype in _ROTATE_TYPES and len(rrset) > 1:
            items = list(rrset)
            shift = turn % len(items)
            if shift:
                saved.append((index, rrset))
                message.answer[index] = dns.rrset.from_rdata_list(
                    rrset.name, rrset.ttl, items[shift:] + items[:shift])
    return saved


def _rotations(message: dns.message.Message) -> int:
    """How many distinct rotations the round robin can make of this message (1 = none)."""
    most = 1
    for rrset in message.answer:
        if rrset.rdtype in _ROTATE_TYPES and len(rrset) > most:
            most = len(rrset)
    return min(most, ROTATIONS)


class Handler:
    """Answers one DNS message at a time; shared by the UDP and TCP servers of a process.

    ``handle`` returns the answer bytes, None (drop), or an awaitable giving bytes or None
    when the answer needs the network (forwarding).
    """

    def __init__(
        self,
        settings: settings_mod.Settings,
        view: store.Store,
        forwarder: forwarding.Forwarder | None = None,
        *,
        answer: Callable[..., Any] | None = None,
        stats: metrics.DnsStats | None = None,
        cache_size: int = CACHE_SIZE,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.settings = settings
        self.view = view
        self.forwarder = forwarder
        self.answer = answer or answering.answer
        self.stats = stats or metrics.DNS
        self.stats.cache_hits.setdefault(_CACHE, 0)
        self.stats.cache_misses.setdefault(_CACHE, 0)
        self.stats.cache_entries.setdefault(_CACHE, 0)
        self.cache_size = cache_size
        # wire.cache_key -> anscache.Entry (rule 3); 5/8 of the byte budget (rule 3e)
        self.cache = anscache.AnswerCache(max(1, cache_size), max(1, cache_bytes * 5 // 8))
        # per proto: the query's bytes after the ID -> [answer tails after the ID, entry, ...]
        # (see _cached); 3/16 of the byte budget each (rule 3e)
        self.exact: dict[str, dict[bytes, list]] = {"udp": {}, "tcp": {}}
        self.exact_bytes = {"udp": 0, "tcp": 0}
        self.exact_budget = max(1, cache_bytes * 3 // 16)
        held = getattr(self.stats, "cache_bytes", None)
        if held is not None:
            held[_CACHE] = self.cache_bytes
        self.generation = -1
        # rule 3: a store with the on_change hook tells us what changed; else watch generation
        hook = getattr(view, "on_change", None)
        self._scoped = hook is not None
        if hook is not None:
            hook.append(self._changed)
        self._unresolved_noted: set[str] = set()  # CNAME targets already logged as unresolvable
        self.turn = 0
        self.payload = max(wire.CLASSIC_UDP, settings.edns_payload)
        self.round_robin = settings.round_robin
        self._zones = sorted(
            ((dns.name.from_text(z), z) for z in settings.domains),
            key=lambda pair: len(pair[0]), reverse=True)
        self._last_panic_log = 0.0
        # the fast path's header bits and zone labels (rule 3c)
        self._recursion = answering.can_forward(settings)
        self.payload_advertised = settings.edns_payload
        self._zone_wires = tuple((z.to_wire().lower(), text) for z, text in self._zones)
        # optional fast path of forwarding.Forwarder: forwarded answers kept as bytes
        self._encoded_reply = getattr(self.forwarder, "encoded_reply", None)
        self._remember_encoded = getattr(self.forwarder, "remember_encoded", None)

    def cache_bytes(self) -> int:
        """What the answer cache and the exact caches hold, by their byte budget's count (rule 3e)."""
        return self.cache.bytes + self.exact_bytes["udp"] + self.exact_bytes["tcp"]

    # -- the packet path ----------------------------------------------------------------------

    def handle(self, data: bytes, proto: str, family: str = "1") -> bytes | None | Awaitable[bytes | None]:
        """Answer data (one DNS message) received over proto ("udp"/"tcp"); never raises."""
        start = time.perf_counter()
        try:
            if len(data) < wire.HEADER_SIZE:
                self.stats.drop("short")
                return None
            if data[2] & 0x80:
                self.stats.drop("response")
                return None
            if self.cache_size:
                if not self._scoped:
                    generation = self.view.generation
                    if generation != self.generation:
                        self._changed(None)
                        self.generation = generation
                # rule 3a: the very same bytes after the ID were answered before -> no parsing
                hit = self.exact[proto].get(data[2:])
                if hit is not None:
                    if hit[1].alive:
                        self.stats.cache_hits[_CACHE] += 1
                        return self._cached(data, hit, proto, family, start)
                    known = hit[4]
                    dropped = hit[1]
                    if dropped.replay is not None and self._scoped:
                        out = self._replayed(data, hit, proto, family, start)
                        if out is not None:
                            return out
                else:
                    known = dropped = None
            else:
                known = dropped = None
            if known is not None:
                # dropped by a change, but these bytes were parsed before: only the ID differs
                old, limit, key = known
                query = wire.Query((data[0] << 8) | data[1], old.flags, old.qname, old.qtype, old.qclass,
                                   old.edns, old.payload, old.do, old.size)
            else:
                query = wire.parse(data)
                if query is not None:
                    limit = wire.udp_limit(query, self.payload) if proto == "udp" else wire.TCP_MAX
                    key = wire.cache_key(query, limit) if self.cache_size else None
            if query is not None:
                if self.cache_size:
                    entry = self.cache.get(key)
                    if entry is not None:
                        variants = entry.fresh(self._revision())
                        tails = [wire.patch(v, query)[2:] for v in variants]
                        hit = self._remember(proto, data, tails, entry, (query, limit, key))
                        self.stats.cache_hits[_CACHE] += 1
                        return self._cached(data, hit, proto, family, start)
                    if self._encoded_reply is not None:
                        # a forwarded answer still fresh in the forward cache, as bytes
                        out = self._encoded_reply(query, key)
                        if out is not None:
                            self.stats.answered(".", proto, family, query.qtype, out[3] & 0x0F, query.size,
                                                len(out), time.perf_counter() - start)
                            return out
                    self.stats.miss(_CACHE)
                    if self._scoped and query.qclass == 1:
                        out = self._fast(data, query, key, limit, proto, family, start)
                        if out is not None:
                            return out
                else:
                    key = None
            else:
                key = None
                limit = wire.TCP_MAX
            return self._slow(data, query, key, limit, proto, family, start)
        except Exception:  # noqa: BLE001 - rule 1: nothing escapes a packet handler
            return self._panic(data, "handling")

    def batch_hits(self, keys: list[bytes], proto: str, family: str = "1") -> list[Any]:
        """The exact-cache answers of a batch of queries received together (rule 3f).

        keys are the queries after their ID. For each in order: the answer after its ID (the
        query's ID goes first); ``(tail, at, serial)``, the same with the four bytes of serial
        written over tail at offset at (a negative answer whose SOA serial moved); or None when
        the query is not answered here (``handle`` answers it).
        """
        if not self.caches_answers:
            return [None] * len(keys)
        start = time.perf_counter()
        exact = self.exact[proto]
        revision = self._revision()
        serial = anscache.serial_bytes(revision)
        epoch = self.stats.epoch
        outs: list[Any] = []
        timed = []  # the latency histograms of the hits
        for key in keys:
            try:
                hit = exact.get(key)
                if hit is not None:
                    tails, entry, seen, counters, _, _ = hit
                    if entry.alive and counters is not None and counters[1] == epoch and counters[0] == family:
                        out = None
                        if seen != revision and entry.serials:
                            # rule 3: the SOA serial of the current mirror, as _cached writes it
                            offsets = entry.serials[0]
                            if len(tails) == 1 and len(offsets) == 1:
                                # a negative answer: the serial goes in as it is sent, so the
                                # entry stays as it is whatever the writes
                                out = (tails[0], offsets[0] - 2, serial)
                            else:
                                tails = _reserial(hit, revision)
                        if len(tails) > 1:
                            self.turn += 1
                            tail = tails[self.turn % len(tails)]
                        else:
                            tail = tails[0]
                        counts = counters[2]
                        counts[0] += 1
                        counts[1] += len(key) + 2
                        counts[2] += len(tail) + 2
                        timed.append(counters[3])
                        outs.append(tail if out is None else out)
                        continue
            except Exception:  # noqa: BLE001 - rule 1: handle answers it (and reports what fails)
                pass
            outs.append(None)
        if timed:
            self.stats.cache_hits[_CACHE] += len(timed)
            metrics.observe_all(timed, time.perf_counter() - start)
        return outs

    def fill_hits(self, slots: Any, rhdr: Any, shdr: Any, count: int, slot: int, proto: str,
                  family: str = "1") -> tuple[int, list[int]]:
        """The exact-cache hits of a batch already read, answered in place by the compiled loop
        (rule 3g; what ``serve_hits`` does for each batch it reads).

        slots, rhdr and shdr are the batch's buffers (``udpbatch.Batcher``: the datagrams, one
        per ``slot`` bytes, their receive and send headers). Returns (ready, misses): the hits
        are answered in their slots with send headers 0..ready-1 pointing at them, in order;
        misses are the indexes of the other datagrams, for ``handle``.
        """
        start = time.perf_counter()
        revision = self._revision()
        ready, self.turn, misses, timed = _hits.fill(
            self._exact_for(proto), slots, rhdr, shdr, count, slot, anscache.serial_bytes(revision), revision,
            self.stats.epoch, family, self.turn)
        if ready:
            self.stats.cache_hits[_CACHE] += ready
            metrics.observe_counted(timed, time.perf_counter() - start)
        return ready, misses

    def serve_hits(self, recv: int, send: int, fd: int, flags: int, rounds: int, slots: Any, rhdr: Any,
                   shdr: Any, size: int, slot: int, proto: str = "udp", family: str = "1") -> tuple:
        """Up to ``rounds`` batches read, their hits answered and sent by the compiled loop (rule
        3g, udpbatch rule 7); recv and send are the addresses of recvmmsg and sendto.

        Returns (count, ready, sent, send_errno, misses, recv_errno) of the batch it stopped at:
        its datagrams, its hits (send headers 0..ready-1), how many of them went out, why the
        next did not, the indexes of the others, and why the last read found nothing (0: a
        batch with misses or refused sends, or ``rounds`` batches, ended the call).
        """
        start = time.perf_counter()
        revision = self._revision()
        (self.turn, hits, batches, timed, count, ready, sent, send_errno, misses, recv_errno) = _hits.serve(
            recv, send, fd, flags, rounds, self._exact_for(proto), slots, rhdr, shdr, size, slot,
            anscache.serial_bytes(revision), revision, self.stats.epoch, family, self.turn)
        if hits:
            self.stats.cache_hits[_CACHE] += hits
            # each hit is counted with the time of its batch (rule 3f): the call's, per batch
            metrics.observe_counted(timed, (time.perf_counter() - start) / batches)
        return count, ready, sent, send_errno, misses, recv_errno

    @property
    def caches_answers(self) -> bool:
        """Whether answers of our zones are kept in the exact cache (rule 3a)."""
        return bool(self.cache_size and self._scoped)

    def _exact_for(self, proto: str) -> dict:
        """The exact cache the compiled loop may answer from: none when answers are not cached."""
        return self.exact[proto] if self.caches_answers else {}

    def _cached(self, data: bytes, hit: list, proto: str, family: str, start: float) -> bytes:
        """data's ID + one of the cached answer tails of hit, an exact-cache entry (the next
        rotation when several), counted as an answer (the caller counts the hit or miss).

        hit is ``[tails, entry, revision, counters, parsed, size]``; counters, once known, are the
        metric counters this exact query updates (request and answer sizes never change for it);
        size is what it counts for in the byte budget (rule 3e)."""
        tails, entry, seen, counters, _, _ = hit
        if entry.serials:
            revision = self._revision()
            if seen != revision:
                tails = _reserial(hit, revision)  # rule 3: the SOA serial of the current mirror
        if len(tails) > 1:
            self.turn += 1
            out = data[:2] + tails[self.turn % len(tails)]
        else:
            out = data[:2] + tails[0]
        stats = self.stats
        if counters is not None and counters[0] == family and counters[1] == stats.epoch:
            counts = counters[2]
            counts[0] += 1
            counts[1] += len(data)
            counts[2] += len(out)
            counters[3].observe(time.perf_counter() - start)
        else:
            counts, hist = stats.answered(entry.zone, proto, family, entry.qtype, out[3] & 0x0F, len(data),
                                          len(out), time.perf_counter() - start)
            hit[3] = (family, stats.epoch, counts, hist)
        return out

    def _remember(self, proto: str, data: bytes, tails: list[bytes], entry: anscache.Entry,
                  parsed: tuple | None) -> list:
        """Keep the answer tails for data's exact bytes (rule 3a), with what the bytes parse to
        (``(query, limit, key)``: a miss after a change parses nothing); returns the new entry."""
        exact = self.exact[proto]
        key = data[2:]
        size = EXACT_BYTES + len(data) + sum(map(len, tails))
        held = self.exact_bytes
        old = exact.pop(key, None)
        if old is not None:
            held[proto] -= old[5]
        while exact and (len(exact) >= self.cache_size or held[proto] + size > self.exact_budget):
            held[proto] -= exact.pop(next(iter(exact)))[5]
        hit = exact[key] = [tails, entry, entry.revision, None, parsed, size]
        held[proto] += size
        return hit

    def _fast(self, data: bytes, query: wire.Query, key: tuple, limit: int, proto: str, family: str,
              start: float) -> bytes | None:
        """A miss answered without dnspython (rule 3c): the answering plan rendered by ``encode``.

        None when the plan is not a cacheable reply from our zones or the renderer cannot write
        it (then the dnspython path answers, with the same semantics).
        """
        qtype = query.qtype
        # A/AAAA answers may be redone from their reads (rule 3d)
        reads = anscache.LoggedReads(self.view) if qtype == 1 or qtype == 28 else anscache.Reads(self.view)
        path = wire.path_of(query.qname)
        try:
            result = answering.plan(path, query.qtype, query.qclass, reads, self.settings)
            if not isinstance(result, answering.Plan) or not result.cacheable:
                return None
            count = encode.rotations(result, ROTATIONS) if self.round_robin else 1
            rendered = encode.render(query, result, self._recursion, self.payload_advertised, limit, count)
            if rendered is None:
                return None
        except Exception:  # noqa: BLE001 - the reference path answers (and reports) it
            return None
        variants, serials = rendered
        zone = _zone_label(self._zone_wires, query.qname.lower())
        entry = anscache.Entry(variants, zone, query.qtype, serials, self._revision())
        if count == 1 and (qtype == 1 or qtype == 28):
            entry.replay = _replay_of(query, path, result, reads, variants[0], self.settings)
        self.cache.put(key, entry, reads)
        self.stats.cache_entries[_CACHE] = len(self.cache)
        self._remember(proto, data, [v[2:] for v in variants], entry, (query, limit, key))
        if count > 1:
            self.turn += 1
            out = variants[self.turn % count]
        else:
            out = variants[0]
        self.stats.answered(zone, proto, family, query.qtype, out[3] & 0x0F, len(data), len(out),
                            time.perf_counter() - start)
        return out

    def _replayed(self, data: bytes, hit: list, proto: str, family: str, start: float) -> bytes | None:
        """A miss of data whose exact-cache entry ``hit`` (see _cached) was dropped but can be
        redone from the reads of its answer (rule 3d), or None. Nothing is parsed: the bytes
        after the ID are the ones ``hit`` was filed under, so the answer after its ID, the
        cache key and the metric counters of ``hit`` are still the right ones."""
        old = hit[1]
        recipe, at = old.replay
        try:
            got = answering.replay(recipe, self.view, self.settings)
            if got is None:
                return None
            outcome, recipe = got
            variants, tails = old.variants, hit[0]
            if outcome is not answering.SAME:
                ttl, address = outcome
                ttl_bytes, rdata = ttl.to_bytes(4, "big"), encode.address(old.qtype, address)
                end = at + 6 + len(rdata)
                message, tail = bytearray(variants[0]), bytearray(tails[0])  # a tail lacks the ID
                message[at:at + 4], message[at + 6:end] = ttl_bytes, rdata
                tail[at - 2:at + 2], tail[at + 4:end - 2] = ttl_bytes, rdata
                variants, tails = [bytes(message)], [bytes(tail)]
        except Exception:  # noqa: BLE001 - planned again, and the reference path reports it
            return None
        entry = anscache.Entry(variants, old.zone, old.qtype, old.serials, old.revision)
        entry.replay = (recipe, at)
        self.cache.put(hit[4][2], entry, old.deps)  # the same reads as the dropped entry's
        self.stats.cache_entries[_CACHE] = len(self.cache)
        self.stats.miss(_CACHE)
        # the same zone, type, rcode and sizes: hit's counters still apply; _cached patches the
        # serial of a NODATA to the mirror's revision
        hit[0], hit[1] = tails, entry
        return self._cached(data, hit, proto, family, start)

    def _revision(self) -> int:
        """The mirror's revision (the SOA serial); 0 for a stand-in view without one."""
        return getattr(self.view, "revision", 0)

    def _changed(self, segments: tuple[str, ...] | None) -> None:
        """The store's on_change hook: drop what the change can affect (rules 3, 3b)."""
        self.cache.changed(segments)
        if segments is None:
            self.exact["udp"].clear()
            self.exact["tcp"].clear()
            self.exact_bytes = {"udp": 0, "tcp": 0}
        else:
            forget = getattr(self.forwarder, "forget", None)
            if forget is not None and segments[:1] == ("arpa",):
                name = _reverse_name(segments)
                if name is not None:
                    forget(name)
        self.stats.cache_entries[_CACHE] = len(self.cache)

    def _panic(self, data: bytes, where: str, exc: BaseException | None = None) -> bytes | None:
        self.stats.panic()
        now = time.monotonic()
        if now - self._last_panic_log >= _PANIC_LOG_INTERVAL:
            self._last_panic_log = now
            info = (type(exc), exc, exc.__traceback__) if exc is not None else True
            logger.error("exception while %s a %d-byte packet; answered SERVFAIL "
                         "(further ones are counted in skydns_panics_total, logged every %ss)",
                         where, len(data), _PANIC_LOG_INTERVAL, exc_info=info)
        try:
            return error_reply(data, dns.rcode.SERVFAIL)
        except Exception:  # noqa: BLE001
            return None

    def zone_of(self, name: dns.name.Name) -> str:
        """The served zone holding name (the metrics' zone label), "." when none."""
        for zone, text in self._zones:
            if name.is_subdomain(zone):
                return text
        return "."

    def _slow(self, data: bytes, parsed: wire.Query | None, key: tuple | None, limit: int,
              proto: str, family: str, start: float) -> bytes | None | Awaitable[bytes | None]:
        if data[2] & 0x78:
            # an opcode other than QUERY (UPDATE, NOTIFY, ...): not implemented, whatever its
            # sections hold (an UPDATE's zone section need not parse as a question)
            out = error_reply(data, dns.rcode.NOTIMP)
            self._count(".", proto, family, 0, len(data), out, start)
            return out
        try:
            query = dns.message.from_wire(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            logger.debug("FORMERR for a %d-byte %s packet: %s", len(data), proto, exc)
            out = error_reply(data, dns.rcode.FORMERR)
            self._count(".", proto, family, 0, len(data), out, start)
            return out
        if parsed is None and proto == "udp":
            limit = wire.CLASSIC_UDP
            if query.edns >= 0:
                limit = max(wire.CLASSIC_UDP, min(query.payload, self.payload))
        qtype = query.question[0].rdtype if query.question else 0
        zone = self.zone_of(query.question[0].name) if query.question else "."
        reads = anscache.Reads(self.view) if key is not None and self._scoped else self.view
        result = self.answer(query, reads, self.settings)
        if isinstance(result, answering.Reply):
            failure = getattr(result, "failure", None)
            if failure is not None:
                self._panic(data, "answering", failure)
            if zone != "." and not getattr(self.view, "loaded", True):
                # rule 8: no mirror yet -> SERVFAIL, never a false NXDOMAIN that clients cache
                out = render(self._servfail(query), limit)
                self._count(zone, proto, family, qtype, len(data), out, start)
                return out
            message = result.message
            if self.round_robin and (count := _rotations(message)) > 1:
                variants = []
                for turn in range(count):
                    saved = _rotated(message, turn)
                    variants.append(render(message, limit))
                    for index, rrset in saved:
                        message.answer[index] = rrset
                self.turn += 1
                out = variants[self.turn % count]
            else:
                variants = [render(message, limit)]
                out = variants[0]
            if key is not None and result.cacheable and parsed is not None:
                entry = anscache.Entry(variants, zone, qtype,
                                       tuple(wire.soa_serial_offsets(v) for v in variants),
                                       self._revision())
                self.cache.put(key, entry, reads if self._scoped else anscache.Reads(None))  # type: ignore[arg-type]
                self.stats.cache_entries[_CACHE] = len(self.cache)
                # rendered for this very query: the tails after the ID are its exact answers
                self._remember(proto, data, [v[2:] for v in variants], entry, (parsed, limit, key))
            self._count(zone, proto, family, qtype, len(data), out, start)
            return out
        if isinstance(result, answering.Forward):
            if self.forwarder is None:
                out = render(self._servfail(query), limit)
                self._count(zone, proto, family, qtype, len(data), out, start)
                return out
            return self._forward(data, query, limit, proto, family, zone, qtype, start, key)
        if isinstance(result, answering.Resolve):
            if self.forwarder is None:
                # No forwarding: the answer without the chain that leaves our zones.
                self._note_unresolved(result.name, "forwarding is off (-no-rec or no -nameservers)")
                out = render(getattr(result, "fallback", None) or result.message, limit)
                self._count(zone, proto, family, qtype, len(data), out, start)
                return out
            return self._resolve(data, result, limit, proto, family, zone, qtype, start)
        raise TypeError(f"answering.answer returned {type(result).__name__}")

    def _note_unresolved(self, name: Any, why: str) -> None:
        """Say once per target why a CNAME to a name outside our zones answers without it."""
        text = str(name).lower()
        if text in self._unresolved_noted or len(self._unresolved_noted) >= 1000:
            return
        self._unresolved_noted.add(text)
        logger.info("CNAME target %s is outside the zones and cannot be resolved: %s; the answer has "
                    "no records for it (logged once per target)", text, why)

    def _servfail(self, query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query, recursion_available=True,
                                          our_payload=self.settings.edns_payload)
        reply.set_rcode(dns.rcode.SERVFAIL)
        return reply

    def _count(self, zone: str, proto: str, family: str, qtype: int, size: int,
               out: bytes | None, start: float) -> None:
        if out is None:
            return
        self.stats.answered(zone, proto, family, qtype, out[3] & 0x0F, size, len(out), time.perf_counter() - start)

    async def _forward(self, data: bytes, query: dns.message.Message, limit: int, proto: str,
                       family: str, zone: str, qtype: int, start: float, key: tuple | None = None) -> bytes | None:
        try:
            reply = await self.forwarder.forward(query, proto)
            reply.id = query.id
            out = render(reply, limit)
            if key is not None and self._remember_encoded is not None:
                self._remember_encoded(key, query, out)
        except Exception:  # noqa: BLE001 - rule 1
            return self._panic(data, "forwarding")
        self._count(zone, proto, family, qtype, len(data), out, start)
        return out

    async def _resolve(self, data: bytes, result: Any, limit: int, proto: str,
                       family: str, zone: str, qtype: int, start: float) -> bytes | None:
        try:
            rrsets = await self.forwarder.lookup(result.name, result.rdtype)
            message = result.message
            if rrsets:
                message.answer.extend(rrsets)
            else:  # upstream has nothing: answering's fallback drops the dangling CNAME chain
                self._note_unresolved(result.name, "the upstreams gave no answer (offline, or they do not know it)")
                message = getattr(result, "fallback", None) or message
            out = render(message, limit)
        except Exception:  # noqa: BLE001 - rule 1
            return self._panic(data, "resolving")
        self._count(zone, proto, family, qtype, len(data), out, start)
        return out


def _replay_of(query: wire.Query, path: tuple[str, ...], result: object, reads: anscache.LoggedReads,
               message: bytes, settings: settings_mod.Settings) -> tuple | None:
    """What ``Handler._replayed`` needs to redo ``message``, the answer of an A/AAAA ``query``
    planned as ``result``: ``(recipe, where the lone record's TTL is)``; None when answering
    rule 16 does not apply. (The paths read are the entry's own, ``anscache.Entry.deps``.)"""
    recipe = answering.replayable(path, query.qtype, result, reads.log, settings)
    if recipe is None:
        return None
    at = wire.HEADER_SIZE + len(query.qname) + 10  # question, pointer, type, class: the TTL
    if recipe[3]:
        _, _, _, ttl, (address,) = result.answer[0]  # type: ignore[attr-defined]
        rdata = encode.address(query.qtype, address)
        if message[at:at + 4] != ttl.to_bytes(4, "big") or message[at + 6:at + 6 + len(rdata)] != rdata:
            return None  # not laid out as _replayed patches it
    return (recipe, at)


def _reserial(hit: list, revision: int) -> list[bytes]:
    """The answer tails of an exact-cache entry with ``revision`` as their SOA serial, kept
    in the entry for that revision (rule 3; see Handler._cached for the entry's layout)."""
    hit[2] = revision
    tails = hit[0] = [_with_serial(tail, offsets, revision) for tail, offsets in zip(hit[0], hit[1].serials)]
    return tails


def _with_serial(tail: bytes, offsets: tuple[int, ...], revision: int) -> bytes:
    """An answer tail (the message after its ID) with ``revision`` as the SOA serial at each of
    ``offsets`` (the message's): a negative answer has one, written by two slices."""
    if len(offsets) == 1:
        at = offsets[0] - 2
        return tail[:at] + anscache.serial_bytes(revision) + tail[at + 4:]
    return anscache.patch_serials(tail, [o - 2 for o in offsets], revision)


@functools.lru_cache(maxsize=kept.NAMES)
def _zone_label(zones: tuple[tuple[bytes, str], ...], name: bytes) -> str:
    """The served zone holding a lower-case wire name (the metrics' zone label), "." when none."""
    for suffix, text in zones:
        if name.endswith(suffix) and (len(name) == len(suffix) or _label_boundary(name, len(name) - len(suffix))):
            return text
    return "."


def _label_boundary(name: bytes, at: int) -> bool:
    """Whether offset ``at`` of an uncompressed wire name starts a label."""
    pos = 0
    while pos < at:
        pos += name[pos] + 1
    return pos == at


def _reverse_name(segments: tuple[str, ...]) -> str | None:
    """The complete reverse name a key under ``arpa`` belongs to (leaf labels below it ignored)."""
    if segments[:2] == ("arpa", "in-addr") and len(segments) >= 6:
        return ".".join(reversed(segments[:6])) + "."
    if segments[:2] == ("arpa", "ip6") and len(segments) >= 34:
        return ".".join(reversed(segments[:34])) + "."
    return None


# -- sockets ----------------------------------------------------------------------------------


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _new_socket(family: int, kind: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(family, kind)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def bind(host: str, port: int, reuseport: bool = False,
         rcvbuf: int = UDP_RCVBUF) -> tuple[socket.socket, socket.socket]:
    """Bind the UDP and TCP sockets of host:port (port 0: one free port for both).

    rcvbuf: the UDP receive buffer to ask for, bytes (0 leaves the kernel's default; rule 6b).
    Raises ListenError with a one-line reason.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {_fmt(host, port)}: {exc.strerror} (use -addr to pick another)") from None
    family, _, _, _, sockaddr = infos[0]
    for _attempt in range(20):
        udp = _new_socket(family, socket.SOCK_DGRAM, reuseport)
        try:
            udp.bind(sockaddr)
        except OSError as exc:
            udp.close()
            raise ListenError(_listen_message(host, port, "udp", exc)) from None
        bound_port = udp.getsockname()[1]
        tcp = _new_socket(family, socket.SOCK_STREAM, reuseport)
        try:
            tcp.bind((sockaddr[0], bound_port, *sockaddr[2:]))
            tcp.listen(TCP_BACKLOG)
        except OSError as exc:
            tcp.close()
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the free UDP port is taken for TCP: pick another pair
            raise ListenError(_listen_message(host, port, "tcp", exc)) from None
        udp.setblocking(False)
        tcp.setblocking(False)
        if rcvbuf > 0:
            set_rcvbuf(udp, rcvbuf)
        return udp, tcp
    raise ListenError(f"cannot listen on {_fmt(host, port)}: no port free for both UDP and TCP")


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of size bytes; returns what the kernel gave (logged when less).

    Linux caps the request at net.core.rmem_max and reports twice the size it keeps (the
    other half is its bookkeeping); the figure compared and returned is the usable half.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        logger.warning("cannot set the UDP receive buffer to %d bytes: %s", size, exc)
        return 0
    usable = got // 2 if sys.platform.startswith("linux") else got
    if usable < size:
        logger.warning("UDP receive buffer is %d bytes, not the %d asked (--udp-rcvbuf): the kernel caps it; "
                       "raise net.core.rmem_max to get more", usable, size)
    return usable


def _listen_message(host: str, port: int, proto: str, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    return f"cannot listen on {_fmt(host, port)}/{proto}: {reason} (use -addr to pick another)"


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler, family: str) -> None:
        self.handler = handler
        self.family = family
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        out = self.handler.handle(data, "udp", self.family)
        if out is None:
            return
        if isinstance(out, bytes):
            try:
                self.transport.sendto(out, addr)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a send error must not stop the server
                logger.debug("UDP send to %s failed: %s", addr, exc)
            return
        task = asyncio.ensure_future(self._finish(out, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _finish(self, pending: Awaitable[bytes | None], addr: Any) -> None:
        out = await pending
        if out is not None and self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.sendto(out, addr)
            except Exception as exc:  # noqa: BLE001
                logger.debug("UDP send to %s failed: %s", addr, exc)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)


class Server:
    """The UDP and TCP listeners of one process, on sockets bound by ``bind``."""

    def __init__(self, handler: Handler, udp: socket.socket, tcp: socket.socket, *,
                 idle_timeout: float = TCP_IDLE_TIMEOUT, max_connections: int = TCP_MAX_CONNECTIONS,
                 udp_batch: int = udpbatch.SIZE, compiled_hits: bool = True) -> None:
        self.handler = handler
        self.udp_batch = udp_batch if udpbatch.available() else 0
        # rule 3g: the compiled loop when it is built and its headers match udpbatch's
        self.compiled_hits = bool(compiled_hits and self.udp_batch and _hits is not None
                                  and _hits.MMSGHDR == udpbatch.MMSGHDR and handler.caches_answers)
        self.udp_sock = udp
        self.tcp_sock = tcp
        self.family = "2" if udp.family == socket.AF_INET6 else "1"
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        # open TCP connections, least recently active first (rule 6a): task -> its writer
        self.connections: collections.OrderedDict[asyncio.Task, asyncio.StreamWriter] = collections.OrderedDict()
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol | None = None
        self._batcher: udpbatch.Batcher | None = None
        self._tcp_server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self.udp_sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.udp_batch:
            hits, handle, family = self.handler.batch_hits, self.handler.handle, self.family
            fill = None
            if self.compiled_hits:
                fill = functools.partial(self.handler.serve_hits, proto="udp", family=family)
            self._batcher = udpbatch.Batcher(self.udp_sock, lambda keys: hits(keys, "udp", family),
                                             lambda data: handle(data, "udp", family), self.handler.stats.drop,
                                             self.udp_batch, fill=fill)
            self._batcher.start()
        else:
            self._udp_transport, self._udp_protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.handler, self.family), sock=self.udp_sock)
        # backlog: start_server(sock=...) calls listen() again, with 100 unless told (rule 6b)
        self._tcp_server = await asyncio.start_server(self._serve_tcp, sock=self.tcp_sock, backlog=TCP_BACKLOG)
        host, port = self.address
        self.handler.stats.server = f"dns://{_fmt(host, port)}"
        if not self.udp_batch:
            udp = "udp one datagram per call"
        elif self.compiled_hits:
            udp = f"udp in batches of {self.udp_batch}, cached hits by the compiled loop"
        else:
            why = "off" if _hits is not None else "not built"
            udp = f"udp in batches of {self.udp_batch}, cached hits by the Python loop (compiled loop {why})"
        logger.info("serving DNS on %s (%s; tcp)", _fmt(host, port), udp)

    async def close(self) -> None:
        """Stop listening, drop open TCP connections and wait for pending forwarded answers briefly."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        for task in list(self.connections):
            task.cancel()
        if self._udp_protocol is not None and self._udp_protocol.pending:
            await asyncio.wait(list(self._udp_protocol.pending), timeout=2.0)
        if self._batcher is not None:
            if self._batcher.pending:
                await asyncio.wait(list(self._batcher.pending), timeout=2.0)
            self._batcher.stop()
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=2.0)
        if self._tcp_server is not None:
            try:
                await asyncio.wait_for(self._tcp_server.wait_closed(), 2.0)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    def _evict(self) -> None:
        """Close the least recently active TCP connection to free its slot (rule 6a)."""
        task, writer = self.connections.popitem(last=False)
        self.handler.stats.drop("tcp_evicted")
        try:
            writer.transport.abort()
        except Exception:  # noqa: BLE001 - it may be closing already
            pass
        task.cancel()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task: asyncio.Task = asyncio.current_task()  # type: ignore[assignment]
        connections = self.connections
        while len(connections) >= max(1, self.max_connections):
            self._evict()
        connections[task] = writer
        loop = asyncio.get_running_loop()
        handle = self.handler.handle
        family = self.family
        last = loop.time()  # the last activity: accepted, or a query answered (rule 6a)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(last + self.idle_timeout):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        data = await reader.readexactly(size) if size else b""
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                out = handle(data, "tcp", family)
                if out is None:
                    continue  # dropped: not activity, the idle deadline stays where it was
                last = loop.time()
                if task in connections:
                    connections.move_to_end(task)
                if not isinstance(out, bytes):
                    out = await out
                    if out is None:
                        continue
                writer.write(len(out).to_bytes(2, "big") + out)
                if writer.transport.get_write_buffer_size():
                    try:
                        # a client that does not read its answers holds a connection slot only
                        # as long as an idle one: then the connection is dropped, unsent data too
                        await asyncio.wait_for(writer.drain(), self.idle_timeout)
                    except (TimeoutError, asyncio.TimeoutError):
                        writer.transport.abort()
                        break
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - a broken connection ends only itself
            logger.debug("TCP connection ended: %s", exc)
        finally:
            connections.pop(task, None)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
