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
   the transport, which points at entries, cannot serve them either.
3. The SOA serial is the mirror's revision, which moves with every write anywhere. It is not a
   dependency: an entry remembers the offsets of the serial fields of its encoded answers and
   ``fresh(revision)`` writes the current revision there before the answer is served (once per
   revision change, not per query). A negative answer (NXDOMAIN/NODATA with the zone's SOA) or
   an SOA answer therefore survives every write that does not touch what it read, and is
   byte-for-byte the answer the reference path would build for the current mirror.
4. At most ``capacity`` entries; the oldest entry goes first when full, and its index
   references go with it (the indexes never outgrow the cache).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from skydns import msg

_WILDCARDS = msg.WILDCARDS


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


class Entry:
    """The encoded answer variants of one cache key (round-robin rotations) and what they read.

    ``variants`` are whole messages (ID of the query that filled the entry). ``serials`` holds,
    per variant, the offsets of its SOA serial fields (rule 3).
    """

    __slots__ = ("variants", "zone", "qtype", "serials", "revision", "alive", "deps", "replay")

    def __init__(self, variants: list[bytes], zone: str, qtype: int,
                 serials: tuple[tuple[int, ...], ...] = (), revision: int = 0) -> None:
        self.variants = variants
        self.zone = zone
        self.qtype = qtype
        self.serials = serials if any(serials) else ()
        self.revision = revision
        self.alive = True
        # per index read: (the index, the paths read) (rule 1)
        self.deps: list[tuple[dict, tuple[tuple[str, ...], ...]]] | tuple = ()
        # what the transport needs to redo the answer after a change (answering rule 16)
        self.replay: tuple | None = None

    def fresh(self, revision: int) -> list[bytes]:
        """The variants with the SOA serial of ``revision`` written in (rule 3)."""
        if self.serials and revision != self.revision:
            self.variants = [patch_serials(v, offsets, revision)
                             for v, offsets in zip(self.variants, self.serials)]
            self.revision = revision
        return self.variants


def patch_serials(message: bytes, offsets: Iterable[int], revision: int) -> bytes:
    """A copy of message with ``revision`` (mod 2**32) as the 4-byte serial at each offset."""
    out = bytearray(message)
    serial = (revision & 0xFFFFFFFF).to_bytes(4, "big")
    for offset in offsets:
        out[offset:offset + 4] = serial
    return bytes(out)


class AnswerCache:
    """Encoded answers by cache key, dropped when something they read changes (rules 1-4)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[Hashable, Entry] = {}
        # rule 1: path -> the keys of the entries that read it, one index per kind of read
        self._visible: dict[tuple[str, ...], set[Hashable]] = {}
        self._below: dict[tuple[str, ...], set[Hashable]] = {}
        self._exact: dict[tuple[str, ...], set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Hashable) -> Entry | None:
        return self.entries.get(key)

    def put(self, key: Hashable, entry: Entry, reads: Reads) -> None:
        """File entry under key with the reads it was built from."""
        old = self.entries.pop(key, None)
        if old is not None:
            self._unlink(key, old)
        if len(self.entries) >= self.capacity:
            oldest = next(iter(self.entries))
            self._unlink(oldest, self.entries.pop(oldest))
        deps = []
        for index, paths in ((self._visible, reads.visible), (self._below, reads.below),
                             (self._exact, reads.exact)):
            if paths:
                for path in paths:
                    keys = index.get(path)
                    if keys is None:
                        index[path] = {key}
                    else:
                        keys.add(key)
                deps.append((index, tuple(paths)))
        entry.deps = deps
        self.entries[key] = entry

    def changed(self, segments: tuple[str, ...] | None) -> int:
        """A key at ``segments`` was put or deleted (None: everything may have changed).

        Returns the number of entries dropped.
        """
        if segments is None:
            dropped = len(self.entries)
            self.clear()
            return dropped
        doomed: set[Hashable] = set()
        visible, below = self._visible, self._below
        # the first depth from which a reader sees the key: past its last "_" segment (1a)
        hidden = 0
        for i, seg in enumerate(segments):
            if seg[:1] == "_":
                hidden = i + 1
        for depth in range(len(segments) + 1):
            path = segments[:depth]
            keys = below.get(path)
            if keys:
                doomed.update(keys)
            if depth >= hidden:
                keys = visible.get(path)
                if keys:
                    doomed.update(keys)
        keys = self._exact.get(segments)
        if keys:
            doomed.update(keys)
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

    def _unlink(self, key: Hashable, entry: Entry) -> None:
        entry.alive = False
        for index, paths in entry.deps:
            for path in paths:
                keys = index.get(path)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[path]
        entry.deps = ()
