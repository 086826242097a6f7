"""The cache of encoded local answers, with invalidation scoped to what a change can affect.

PURE: no I/O, no clock. The transport fills it on a miss and serves hits from it; the store
tells it what changed (``Store.on_change``) and it drops exactly the answers that read it.

Rules (DESIGN section 5: a changed record is served on the very next query, and a change costs
only the answers it can affect):

1. What an answer depends on is recorded, not predicted. ``answering.answer`` runs against a
   ``Reads`` view that passes every store read through and notes what was read. Whatever the
   answering rules are (subtree answers, wildcards, CNAME chains, SRV/MX/NS glue, apex and
   ``apex.dns``/``ns.dns`` records, pod names, PTR names, NXDOMAIN versus NODATA), an answer can
   only change when something it read changes, so the recorded reads are its dependencies.
   There are three kinds of read, each with its own index:
   1a. ``visible(P)``: the records at or below path P, with SkyDNS's hidden rule (records
       reached through a ``_`` segment below P are not seen). A change of key K touches it when
       P is a prefix of K (P == K included) and no segment of K after P starts with ``_``.
   1b. ``below(P)``: whether anything at all is stored at or below P (``exists_path``,
       NXDOMAIN versus NODATA), the labels below P (``children``), and every read with a
       wildcard, recorded at the path before the first wildcard. A change of key K touches it when P is a prefix of K.
   1c. ``exact(P)``: the record at exactly P (CNAME and forward-zone PTR lookups). A change of
       key K touches it when P == K.
   A change of key K is checked against every prefix of K (at most one dict lookup per segment
   and index), never against the cached answers: its cost does not grow with the cache.
2. A key change drops every entry that read it (and only those); a full reload of the mirror
   (``replace``) drops everything. Dropped entries are marked dead, so the exact-bytes cache of
   the transport, which points at entries, cannot serve them either. A dropped entry keeps its
   answer and the paths it read only when the transport can redo it from them (``replay``).
3. The SOA serial is the mirror's revision, which moves with every write anywhere. It is not a
   dependency: an entry remembers the offsets of the serial fields of its encoded answers and
   ``fresh(revision)`` writes the current revision there before the answer is served (once per
   revision change, not per query). A negative answer (NXDOMAIN/NODATA with the zone's SOA) or
   an SOA answer therefore survives every write that does not touch what it read, and is
   byte-for-byte the answer the reference path would build for the current mirror.
4. At most ``capacity`` entries and, when ``max_bytes`` is given, at most that many bytes by
   the entries' sizes (or one entry bigger than that alone); the oldest entries go first
   when a new one would pass either bound, and their index references go with them (the
   indexes never outgrow the cache). An entry's size is its answer bytes plus ``ENTRY_BYTES``
   and ``PATH_BYTES`` per path it read: what it costs the process (the entry, its index
   references, the transport's exact-bytes entry, its query), measured with tracemalloc, so
   that a budget in bytes holds whatever the answers are (10,000 answers of 100 SRV targets
   are 75 MB of answer bytes).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

from skydns import msg

_WILDCARDS = msg.WILDCARDS
# What an entry costs besides its answer bytes (rule 4): the Entry, its Paths, its index
# references, the exact-bytes entry and the parsed query the transport keeps beside it.
ENTRY_BYTES = 1700
PATH_BYTES = 150


def _base(segments: tuple[str, ...]) -> tuple[str, ...] | None:
    """The segments before the first wildcard, or None when there is no wildcard."""
    if _WILDCARDS.isdisjoint(segments):
        return None
    for i, seg in enumerate(segments):
        if seg in _WILDCARDS:
            return segments[:i]
    return None


class Reads:
    """A store view that records what is read through it (rule 1); otherwise the store itself."""

    __slots__ = ("view", "visible", "below", "exact")

    def __init__(self, view: Any) -> None:
        self.view = view
        self.visible: set[tuple[str, ...]] = set()
        self.below: set[tuple[str, ...]] = set()
        self.exact: set[tuple[str, ...]] = set()

    @property
    def prefix(self) -> str:
        return self.view.prefix

    @property
    def revision(self) -> int:
        return self.view.revision

    @property
    def loaded(self) -> bool:
        return self.view.loaded

    def find(self, segments: tuple[str, ...], exact: bool = False, limit: int | None = None) -> list:
        if _WILDCARDS.isdisjoint(segments):
            (self.exact if exact else self.visible).add(segments)
        else:
            self.below.add(_base(segments))  # type: ignore[arg-type]
        return self.view.find(segments, exact, limit)

    def exists_path(self, segments: tuple[str, ...]) -> bool:
        self.below.add(segments if _WILDCARDS.isdisjoint(segments) else _base(segments))  # type: ignore[arg-type]
        return self.view.exists_path(segments)

    def children(self, segments: tuple[str, ...]) -> list[str]:
        self.below.add(segments)
        return self.view.children(segments)


class LoggedReads(Reads):
    """Reads that also keeps every read with its result, in order (answering rule 16): ``log``
    holds ``(kind 0 find / 1 exists_path / 2 children, segments, exact, limit, result)``."""

    __slots__ = ("log",)

    def __init__(self, view: Any) -> None:
        self.view = view
        self.visible: set[tuple[str, ...]] = set()
        self.below: set[tuple[str, ...]] = set()
        self.exact: set[tuple[str, ...]] = set()
        self.log: list[tuple] = []

    # Reads' methods, inline
    def find(self, segments: tuple[str, ...], exact: bool = False, limit: int | None = None) -> list:
        if _WILDCARDS.isdisjoint(segments):
            (self.exact if exact else self.visible).add(segments)
        else:
            self.below.add(_base(segments))  # type: ignore[arg-type]
        got = self.view.find(segments, exact, limit)
        self.log.append((0, segments, exact, limit, got))
        return got

    def exists_path(self, segments: tuple[str, ...]) -> bool:
        self.below.add(segments if _WILDCARDS.isdisjoint(segments) else _base(segments))  # type: ignore[arg-type]
        got = self.view.exists_path(segments)
        self.log.append((1, segments, None, None, got))
        return got

    def children(self, segments: tuple[str, ...]) -> list[str]:
        self.below.add(segments)
        got = self.view.children(segments)
        self.log.append((2, segments, None, None, got))
        return got


class Paths:
    """What an entry read, per index (rule 1), as tuples: a fraction of the size of ``Reads``'s
    sets, and kept by a dropped entry so that its answer can be filed again (rule 2)."""

    __slots__ = ("visible", "below", "exact")

    def __init__(self, visible: tuple, below: tuple, exact: tuple) -> None:
        self.visible = visible
        self.below = below
        self.exact = exact

    def __len__(self) -> int:
        return len(self.visible) + len(self.below) + len(self.exact)


class Entry:
    """The encoded answer variants of one cache key (round-robin rotations) and what they read.

    ``variants`` are whole messages (ID of the query that filled the entry). ``serials`` holds,
    per variant, the offsets of its SOA serial fields (rule 3). ``size`` is what the entry is
    counted for in the cache's byte budget (rule 4).
    """

    __slots__ = ("variants", "zone", "qtype", "serials", "revision", "alive", "deps", "replay", "size")

    def __init__(self, variants: list[bytes], zone: str, qtype: int,
                 serials: tuple[tuple[int, ...], ...] = (), revision: int = 0) -> None:
        self.variants = variants
        self.zone = zone
        self.qtype = qtype
        self.serials = serials if any(serials) else ()
        self.revision = revision
        self.alive = True
        # the paths read, per index (rule 1); kept when the entry is dropped (rule 2)
        self.deps: Paths | None = None
        # what the transport needs to redo the answer after a change (answering rule 16)
        self.replay: tuple | None = None
        self.size = 0

    def fresh(self, revision: int) -> list[bytes]:
        """The variants with the SOA serial of ``revision`` written in (rule 3)."""
        if self.serials and revision != self.revision:
            self.variants = [patch_serials(v, offsets, revision)
                             for v, offsets in zip(self.variants, self.serials)]
            self.revision = revision
        return self.variants


def serial_bytes(revision: int) -> bytes:
    """The 4 bytes of the SOA serial of ``revision`` (mod 2**32), as the wire carries them."""
    return (revision & 0xFFFFFFFF).to_bytes(4, "big")


def patch_serials(message: bytes, offsets: Iterable[int], revision: int) -> bytes:
    """A copy of message with ``revision`` (mod 2**32) as the 4-byte serial at each offset."""
    out = bytearray(message)
    serial = serial_bytes(revision)
    for offset in offsets:
        out[offset:offset + 4] = serial
    return bytes(out)


class AnswerCache:
    """Encoded answers by cache key, dropped when something they read changes (rules 1-4)."""

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes: float = math.inf if max_bytes is None else max_bytes
        self.bytes = 0  # the sizes of the entries held (rule 4)
        self.entries: dict[Hashable, Entry] = {}
        # rule 1: path -> the key of the one entry that read it, or a set of the keys of the
        # entries that read it (most paths are read by one entry; a set costs 216 bytes)
        self._visible: dict[tuple[str, ...], Any] = {}
        self._below: dict[tuple[str, ...], Any] = {}
        self._exact: dict[tuple[str, ...], Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Hashable) -> Entry | None:
        return self.entries.get(key)

    def put(self, key: Hashable, entry: Entry, reads: Reads | Paths) -> None:
        """File entry under key with the reads it was built from (or the paths a dropped entry
        of the same answer read)."""
        old = self.entries.pop(key, None)
        if old is not None:
            self._unlink(key, old)
        paths = reads if isinstance(reads, Paths) else Paths(
            tuple(reads.visible), tuple(reads.below), tuple(reads.exact))
        entry.size = size = ENTRY_BYTES + PATH_BYTES * len(paths) + sum(map(len, entry.variants))
        entries = self.entries
        while entries and (len(entries) >= self.capacity or self.bytes + size > self.max_bytes):
            oldest = next(iter(entries))
            self._unlink(oldest, entries.pop(oldest))
        for index, read in ((self._visible, paths.visible), (self._below, paths.below),
                            (self._exact, paths.exact)):
            for path in read:
                keys = index.get(path)
                if keys is None:
                    index[path] = key
                elif type(keys) is set:
                    keys.add(key)
                elif keys != key:
                    index[path] = {keys, key}
        entry.deps = paths
        self.bytes += size
        entries[key] = entry

    def changed(self, segments: tuple[str, ...] | None) -> int:
        """A key at ``segments`` was put or deleted (None: everything may have changed).

        Returns the number of entries dropped.
        """
        if segments is None:
            dropped = len(self.entries)
            self.clear()
            return dropped
        visible, below = self._visible, self._below
        # the first depth from which a reader sees the key: past its last "_" segment (1a)
        hidden = 0
        for i, seg in enumerate(segments):
            if seg[:1] == "_":
                hidden = i + 1
        # what the indexes hold for the paths the change touches: a key, a set of keys or None
        held = [self._exact.get(segments)]
        for depth in range(len(segments) + 1):
            path = segments[:depth]
            held.append(below.get(path))
            if depth >= hidden:
                held.append(visible.get(path))
        doomed: set[Hashable] = set()
        for keys in held:
            if type(keys) is set:
                doomed.update(keys)
            elif keys is not None:
                doomed.add(keys)
        for key in doomed:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self._unlink(key, entry)
        return len(doomed)

    def clear(self) -> None:
        for entry in self.entries.values():
            entry.alive = False
        self.entries.clear()
        self._visible.clear()
        self._below.clear()
        self._exact.clear()
        self.bytes = 0

    def _unlink(self, key: Hashable, entry: Entry) -> None:
        entry.alive = False
        self.bytes -= entry.size
        paths = entry.deps  # an entry held has its paths (put)
        if entry.replay is None:
            # the transport's exact cache may still point at it, but only a replay reads a
            # dropped entry's answer and paths (rule 2): they go now, not with the exact entry
            entry.variants = []
            entry.deps = None
        for index, read in ((self._visible, paths.visible), (self._below, paths.below),
                            (self._exact, paths.exact)):
            for path in read:
                keys = index.get(path)
                if type(keys) is set:
                    keys.discard(key)
                    if len(keys) == 1:
                        index[path] = next(iter(keys))
                elif keys is not None and keys == key:
                    del index[path]
