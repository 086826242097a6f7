"""Cache of forwarded answers, keyed like CoreDNS's cache plugin.

PURE: no I/O, no clock, no randomness; every call that needs the time takes `now`
(seconds, any monotonic origin).

Rules:
1. The key is (lower-cased qname, qtype, qclass, DO, CD): the question and the two flags that
   change what an upstream returns.
2. Only NOERROR and NXDOMAIN answers are kept, never truncated ones. A positive answer
   (NOERROR with answer records) lives for the lowest TTL among its records, capped at
   max_ttl. A negative answer (NXDOMAIN, or NOERROR without answer records) lives for
   min(SOA TTL, SOA MINIMUM) of the SOA in authority (RFC 2308), capped at max_negative_ttl;
   without an SOA it is not kept. A lifetime of 0 is not kept.
3. Served answers have every TTL counted down by the whole seconds spent in the cache.
4. The cache holds at most `capacity` entries and, with `max_bytes`, at most that many bytes
   by ``size_of`` (what an answer's objects take: about 600 bytes, 200 per RRset and 150 per
   record, plus the text of TXT records; tracemalloc); a new entry evicts the least recently
   used (and any dead entries that come next in that order), and an answer bigger than the
   whole budget is not kept. Whatever upstreams send (a lying one answering every name with
   64 KB), the memory stays bounded: without it, 10,000 entries had no bound but the size of
   an answer. ``Encodings`` is bounded the same way (rule 7); ``Failures`` holds a key and a
   time per entry and is bounded by entries (rule 9).
5. An expired entry stays usable for `stale` seconds after expiry through get_stale(), which
   the forwarder calls only when every upstream failed (RFC 8767); such answers carry
   STALE_TTL.
6. Entries are never mutated after put(); get() returns fresh RRset copies, so callers may
   keep what they get.
7. Encoded (the hot path): an encoded reply plus the offsets of its TTL fields; a hit copies
   the bytes and lowers each TTL by the whole seconds elapsed, never past the entry's expiry.
   ``Encodings`` holds them by the transport's cache key, bounded, oldest out first.
8. Nothing here depends on the local store: entries leave by TTL, by capacity, or by
   ``forget(name)``, which drops every entry of one name (all types, both flags) in time
   proportional to that name's entries (a name index), e.g. when a reverse name became local
   or the hosts file changed it.
9. ``Failures``: (key -> expiry) of queries every upstream just failed (SERVFAIL); the
   forwarder answers them SERVFAIL without asking again until they expire (CoreDNS caches
   SERVFAIL for 5 s). Bounded, oldest out first; never served stale.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

# TTL of an answer served stale (RFC 8767 section 4 recommends 30 s).
STALE_TTL = 30


class Kind(str, enum.Enum):
    """Cache entry type, the `type` label of the cache metrics (CoreDNS names)."""

    SUCCESS = "success"
    DENIAL = "denial"


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    """What a cached answer is filed under."""

    name: str  # lower-cased, fully qualified text
    rdtype: int
    rdclass: int
    do: bool = False
    cd: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """The parts of an upstream reply that are relayed to a client.

    `flags` are the header flags worth relaying (AA, AD); the question, ID, RD, RA and EDNS
    come from the client's query when the reply is built.
    """

    rcode: int
    flags: int
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    answer: Answer
    kind: Kind
    stored: float
    lifetime: int
    size: int = 0


# What a kept answer costs (rule 4), bytes: the entry, and per RRset and record of it.
_ENTRY_BYTES = 600
_RRSET_BYTES = 200
_RECORD_BYTES = 150


def size_of(answer: Answer) -> int:
    """What an answer's objects take in memory, about (rule 4)."""
    size = _ENTRY_BYTES
    for section in (answer.answer, answer.authority, answer.additional):
        for rrset in section:
            size += _RRSET_BYTES + _RECORD_BYTES * len(rrset)
            if rrset.rdtype == dns.rdatatype.TXT or rrset.rdtype == dns.rdatatype.SPF:
                size += sum(len(chunk) for rdata in rrset for chunk in rdata.strings)
    return size


RELAYED_FLAGS = dns.flags.AA | dns.flags.AD


def key_for(query: dns.message.Message) -> Key | None:
    """Cache key of a query, or None when it has not exactly one question."""
    if len(query.question) != 1:
        return None
    question = query.question[0]
    do = bool(query.ednsflags & dns.flags.DO) if query.edns >= 0 else False
    return Key(
        question.name.to_text().lower(),
        int(question.rdtype),
        int(question.rdclass),
        do,
        bool(query.flags & dns.flags.CD),
    )


def answer_from(reply: dns.message.Message) -> Answer:
    """Keep what a client needs from an upstream reply."""
    return Answer(
        reply.rcode(),
        reply.flags & RELAYED_FLAGS,
        tuple(reply.answer),
        tuple(reply.authority),
        tuple(reply.additional),
    )


def classify(answer: Answer) -> Kind | None:
    """SUCCESS, DENIAL, or None for answers that are never cached (errors)."""
    if answer.rcode == dns.rcode.NXDOMAIN:
        return Kind.DENIAL
    if answer.rcode != dns.rcode.NOERROR:
        return None
    return Kind.SUCCESS if answer.answer else Kind.DENIAL


def lifetime(answer: Answer, kind: Kind, max_ttl: int, max_negative_ttl: int) -> int:
    """Seconds an answer may be cached (0: do not cache)."""
    if kind is Kind.SUCCESS:
        ttls = [rrset.ttl for section in (answer.answer, answer.authority, answer.additional) for rrset in section]
        return max(0, min([max_ttl, *ttls]))
    for rrset in answer.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa_min = min(rdata.minimum for rdata in rrset)
            return max(0, min(max_negative_ttl, rrset.ttl, soa_min))
    return 0


def _aged(section: tuple[dns.rrset.RRset, ...], elapsed: int, fixed: int | None) -> tuple[dns.rrset.RRset, ...]:
    out = []
    for rrset in section:
        copy = rrset.copy()
        copy.ttl = fixed if fixed is not None else max(0, rrset.ttl - elapsed)
        out.append(copy)
    return tuple(out)


def _served(entry: _Entry, elapsed: int, fixed: int | None = None) -> Answer:
    answer = entry.answer
    return Answer(
        answer.rcode,
        answer.flags,
        _aged(answer.answer, elapsed, fixed),
        _aged(answer.authority, elapsed, fixed),
        _aged(answer.additional, elapsed, fixed),
    )


class Cache:
    """Bounded LRU of forwarded answers with TTL count-down and serve-stale."""

    def __init__(
        self, capacity: int = 10000, max_ttl: int = 3600, max_negative_ttl: int = 30, stale: float = 0.0,
        max_bytes: int | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.stale = stale
        self.max_bytes: float = math.inf if max_bytes is None else max_bytes
        self.bytes = 0  # the sizes of the entries held (rule 4)
        self._entries: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()
        self._counts = {Kind.SUCCESS: 0, Kind.DENIAL: 0}
        self._names = _NameIndex()

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, kind: Kind) -> int:
        """Entries of one kind (the skydns_cache_entries gauge)."""
        return self._counts[kind]

    def put(self, key: Key, answer: Answer, now: float) -> Kind | None:
        """File an answer; return its kind, or None when it is not cacheable."""
        if self.capacity <= 0:
            return None
        kind = classify(answer)
        if kind is None:
            return None
        seconds = lifetime(answer, kind, self.max_ttl, self.max_negative_ttl)
        if seconds <= 0:
            return None
        size = size_of(answer)
        if size > self.max_bytes:
            return None
        self._remove(key)
        if len(self._entries) >= self.capacity or self.bytes + size > self.max_bytes:
            self._evict(now, size)
        self._entries[key] = _Entry(answer, kind, now, seconds, size)
        self._names.add(key.name, key)
        self._counts[kind] += 1
        self.bytes += size
        return kind

    def forget(self, name: str) -> int:
        """Drop every entry of name (lower-case, fully qualified text); how many went (rule 8)."""
        keys = self._names.pop(name)
        for key in keys:
            self._remove(key)
        return len(keys)

    def get(self, key: Key, now: float) -> tuple[Answer, Kind] | None:
        """A fresh answer with TTLs counted down, or None (expired entries stay for get_stale)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        elapsed = int(now - entry.stored)
        if elapsed >= entry.lifetime or elapsed < 0:
            if now - entry.stored - entry.lifetime > self.stale:
                self._remove(key)
            return None
        self._entries.move_to_end(key)
        return _served(entry, elapsed), entry.kind

    def get_stale(self, key: Key, now: float) -> tuple[Answer, Kind] | None:
        """An expired answer still inside the serve-stale window, TTLs set to STALE_TTL."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expired_for = now - entry.stored - entry.lifetime
        if expired_for > self.stale:
            self._remove(key)
            return None
        if expired_for < 0:
            return _served(entry, int(now - entry.stored)), entry.kind
        return _served(entry, 0, fixed=STALE_TTL), entry.kind

    def entry_times(self, key: Key) -> tuple[float, float] | None:
        """(stored, expires) of a fresh entry, for encoding its answer once (None if absent)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return entry.stored, entry.stored + entry.lifetime

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._counts[entry.kind] -= 1
            self._names.discard(key.name, key)
            self.bytes -= entry.size

    def _evict(self, now: float, size: int = 0) -> None:
        # Least recently used first; an entry past its stale window goes too if it is next.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if (len(self._entries) < self.capacity and self.bytes + size <= self.max_bytes
                    and now - entry.stored - entry.lifetime <= self.stale):
                return
            self._remove(key)


class _NameIndex:
    """name -> the keys filed under it, for forget(name) (rule 8)."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[str, set] = {}

    def add(self, name: str, key: object) -> None:
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = set()
        keys.add(key)

    def discard(self, name: str, key: object) -> None:
        keys = self._keys.get(name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[name]

    def pop(self, name: str) -> list:
        return list(self._keys.pop(name, ()))

    def clear(self) -> None:
        self._keys.clear()


class Failures:
    """Queries every upstream failed just now, answered SERVFAIL until they expire (rule 9)."""

    def __init__(self, capacity: int = 10000, ttl: float = 5.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._expires: collections.OrderedDict[Key, float] = collections.OrderedDict()
        self._names = _NameIndex()

    def __len__(self) -> int:
        return len(self._expires)

    def put(self, key: Key, now: float) -> bool:
        """Remember that key failed at now; False when failures are not kept (ttl or capacity 0)."""
        if self.ttl <= 0 or self.capacity <= 0:
            return False
        self._drop(key)
        while len(self._expires) >= self.capacity:
            self._drop(next(iter(self._expires)))
        self._expires[key] = now + self.ttl
        self._names.add(key.name, key)
        return True

    def failed(self, key: Key, now: float) -> bool:
        """Whether key failed less than ttl seconds before now."""
        expires = self._expires.get(key)
        if expires is None:
            return False
        if now < expires and now >= expires - self.ttl:
            return True
        self._drop(key)
        return False

    def forget(self, name: str) -> int:
        keys = self._names.pop(name)
        for key in keys:
            self._expires.pop(key, None)
        return len(keys)

    def clear(self) -> None:
        self._expires.clear()
        self._names.clear()

    def _drop(self, key: Key) -> None:
        if self._expires.pop(key, None) is not None:
            self._names.discard(key.name, key)


# ---------------------------------------------------------------------------------------------
# encoded answers: TTL fields found once, patched per hit (the forwarded-answer hot path)


def _skip_name(message: bytes, pos: int) -> int:
    """Offset just past the (possibly compressed) name starting at pos; IndexError if cut short."""
    while True:
        length = message[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            message[pos + 1]  # the pointer's second byte must exist
            return pos + 2
        if length & 0xC0:
            raise ValueError(f"unsupported label type at offset {pos}")
        pos += length + 1


def ttl_offsets(message: bytes) -> tuple[int, ...] | None:
    """Offsets of the TTL field of every record of an encoded message except OPT.

    None when the message is not well formed (the caller then just does not cache it).
    """
    try:
        if len(message) < 12:
            return None
        qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", message, 4)
        pos = 12
        for _ in range(qdcount):
            pos = _skip_name(message, pos) + 4
        offsets = []
        for _ in range(ancount + nscount + arcount):
            pos = _skip_name(message, pos)
            rdtype, _, _, rdlength = struct.unpack_from("!HHIH", message, pos)
            if rdtype != 41:
                offsets.append(pos + 4)
            pos += 10 + rdlength
        if pos != len(message):
            return None
        return tuple(offsets)
    except (IndexError, ValueError, struct.error):
        return None


def age_wire(message: bytes, offsets: tuple[int, ...], seconds: int) -> bytes:
    """A copy of message with every TTL at offsets lowered by seconds (not below 0)."""
    if seconds <= 0 or not offsets:
        return message
    out = bytearray(message)
    for offset in offsets:
        ttl = struct.unpack_from("!I", out, offset)[0]
        struct.pack_into("!I", out, offset, ttl - seconds if ttl > seconds else 0)
    return bytes(out)


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded reply to a forwarded query, valid until `expires`.

    Its TTLs are those served at `rendered` (a time on the cache's clock); a hit at `now`
    lowers them by the whole seconds since then, counted like get() counts them.
    """

    message: bytes
    offsets: tuple[int, ...]
    stored: float
    rendered_elapsed: int
    expires: float

    def at(self, now: float) -> bytes | None:
        """The message with TTLs for `now`, or None once expired."""
        if now >= self.expires:
            return None
        return age_wire(self.message, self.offsets, int(now - self.stored) - self.rendered_elapsed)


# What an encoded reply costs besides its bytes (rule 7), and per TTL offset of it.
_ENCODED_BYTES = 400
_OFFSET_BYTES = 40


class Encodings:
    """Encoded forwarded replies by the transport's cache key (rule 7), bounded by entries and,
    with ``max_bytes``, by their bytes and what each costs beside them (the oldest entry goes
    first; a reply bigger than the budget is not kept), with forget(name) (rule 8)."""

    def __init__(self, capacity: int = 10000, max_bytes: int | None = None) -> None:
        self.capacity = max(1, capacity)
        self.max_bytes: float = math.inf if max_bytes is None else max_bytes
        self.bytes = 0
        self._entries: dict[tuple, tuple[str, Encoded, int]] = {}
        self._names = _NameIndex()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Encoded | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: tuple, name: str, encoded: Encoded) -> None:
        """File encoded under key for name (lower-case, fully qualified text)."""
        self.drop(key)
        size = _ENCODED_BYTES + len(encoded.message) + _OFFSET_BYTES * len(encoded.offsets)
        if size > self.max_bytes:
            return
        while self._entries and (len(self._entries) >= self.capacity or self.bytes + size > self.max_bytes):
            self.drop(next(iter(self._entries)))
        self._entries[key] = (name, encoded, size)
        self._names.add(name, key)
        self.bytes += size

    def drop(self, key: tuple) -> None:
        entry = self._pop(key)
        if entry is not None:
            self._names.discard(entry[0], key)

    def forget(self, name: str) -> int:
        keys = self._names.pop(name)
        for key in keys:
            self._pop(key)
        return len(keys)

    def _pop(self, key: tuple) -> tuple[str, Encoded, int] | None:
        """Remove key's entry (not from the name index) and its bytes from the count."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[2]
        return entry

    def clear(self) -> None:
        self._entries.clear()
        self._names.clear()
        self.bytes = 0
