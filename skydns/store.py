"""The in-memory mirror of the etcd prefix: etcd key -> msg.Service, indexed for lookups.

PURE: no I/O, no clock, no randomness. The etcd watch (skydns.etcdwatch) feeds it with
replace()/put()/delete(); answering reads it with find()/lookup()/exists().

Rules of this module:

1. Keys are stored by path: a trie of key segments below ``/<prefix>/`` (the labels of the
   name, reversed). A lookup walks the trie by the query's labels and never scans keys that
   are not at or below the queried name. Segments are matched case-insensitively; ``bad``,
   ``records()`` and ``Service.key`` keep the etcd key as written. (Two keys that differ only
   in letter case share one trie node: the last put answers.)
2. What a name answers with (DESIGN section 3): every record at or below its key, except
   records reached through a segment starting with ``_`` *below* the queried name (the etcd
   v2 hidden-key rule kube2sky's SRV layout ``<svc>/_tcp/_http/<leaf>`` relied on). Labels
   written in the query itself may start with ``_``.
3. Wildcards ``*`` and ``any`` in the query match exactly one segment, anywhere in the name
   (never a ``_`` segment); deeper records below a match are included as for plain names.
4. ``exact=True`` returns only records whose key is the name itself (no subtree).
5. SkyDNS ``group``: among the records found, the group of the shallowest records decides;
   if set, only records of that group or without a group are returned; if the shallowest
   records disagree, grouping is ignored.
6. A bad value (msg.RecordError) removes the previous record of that key (etcd no longer
   holds it) and is remembered in ``bad`` with its error text; a later good put or a delete
   clears it. Nothing here raises on bad data.
7. ``generation`` goes up by one on every change; ``revision`` is the etcd revision the mirror
   reflects (the SOA serial). After every put() and delete(), each callable in ``on_change``
   is called with the key's lower-cased path segments below the prefix (a bad value counts:
   it removed the key's previous record); after replace(), with None (everything changed).
   The answer cache uses this to drop only what a change can affect.
8. Records come out in key order (segments sorted, a record before the records below it),
   whatever order they were written in: a mirror built by the watch answers exactly like one
   built by a relist (etcd ranges are key-sorted), e.g. when answering picks the first alias.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from skydns import msg

logger = logging.getLogger(__name__)

_WILDCARDS = msg.WILDCARDS


# The children of every leaf: never written to (_put replaces it before adding a child).
_NO_CHILDREN: dict[str, _Node] = {}


class _Node:
    """One key segment: the record stored at exactly this key (if any) and the deeper segments."""

    __slots__ = ("children", "record")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = _NO_CHILDREN  # a leaf shares one empty dict
        self.record: msg.Service | None = None


class Store:
    """In-memory mirror of ``/<prefix>/`` in etcd with SkyDNS lookup semantics."""

    def __init__(self, prefix: str = msg.DEFAULT_PREFIX) -> None:
        self.prefix = prefix.strip("/")
        self._head = "/" + self.prefix + "/"
        self.revision = 0
        self.generation = 0
        self.on_change: list[Callable[[tuple[str, ...] | None], object]] = []
        self.loaded = False
        self.bad: dict[str, str] = {}
        self._root = _Node()
        self._records: dict[str, msg.Service] = {}
        # Records with a non-empty group; when zero, lookups can stop early at their limit.
        self._grouped = 0

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_records(cls, records: Mapping[str, msg.Service | str], prefix: str = msg.DEFAULT_PREFIX,
                     revision: int = 1) -> Store:
        """A loaded store from ``{name or key: record or JSON}`` (for tests and examples).

        A key starting with ``/`` is an etcd key; anything else is a DNS name whose key is
        the record's own key (a leaf). str values are parsed as SkyDNS JSON.
        """
        items: list[tuple[str, bytes]] = []
        for where, value in records.items():
            key = where if where.startswith("/") else msg.name_to_key(where, prefix)
            data = value if isinstance(value, str) else msg.encode(value)
            items.append((key, data.encode()))
        store = cls(prefix)
        store.replace(items, revision)
        return store

    def replace(self, items: Iterable[tuple[str, bytes]], revision: int) -> None:
        """Load a full snapshot (the result of a prefix range read at ``revision``)."""
        self._root = _Node()
        self._records = {}
        self._grouped = 0
        self.bad = {}
        for key, value in items:
            self._put(_text(key), value)
        self.revision = revision
        self.generation += 1
        self.loaded = True
        for callback in self.on_change:
            callback(None)
        logger.info("store loaded %d records at revision %d (%d bad)", len(self._records), revision,
                    len(self.bad))

    def put(self, key: str, value: bytes, revision: int) -> bool:
        """Apply one etcd put; False when the value is not a valid record (logged, in ``bad``)."""
        key = _text(key)
        ok = self._put(key, value)
        self.revision = max(self.revision, revision)
        self.generation += 1
        self._notify(key)
        return ok

    def delete(self, key: str, revision: int) -> None:
        """Apply one etcd delete (unknown keys are fine)."""
        key = _text(key)
        self.bad.pop(key, None)
        self._remove(key)
        self.revision = max(self.revision, revision)
        self.generation += 1
        self._notify(key)

    def _notify(self, key: str) -> None:
        if self.on_change:
            segments = self._segments(key)
            if segments is not None:
                for callback in self.on_change:
                    callback(segments)

    def _put(self, key: str, value: bytes) -> bool:
        segments = self._segments(key)
        if segments is None:
            self.bad[key] = f"key is not under {self._head}"
            logger.warning("skipping key %s: not under %s", key, self._head)
            return False
        try:
            record = msg.decode(value, key=key)
        except msg.RecordError as exc:
            self._remove(key)
            self.bad[key] = str(exc)
            logger.warning("skipping bad record at %s: %s", key, exc)
            return False
        self.bad.pop(key, None)
        node = self._root
        for seg in segments:
            child = node.children.get(seg)
            if child is None:
                if node.children is _NO_CHILDREN:
                    node.children = {}
                child = node.children[seg] = _Node()
            node = child
        old = node.record
        if old is not None and old.group:
            self._grouped -= 1
        if record.group:
            self._grouped += 1
        node.record = record
        self._records[key] = record
        return True

    def _remove(self, key: str) -> None:
        if self._records.pop(key, None) is None:
            return
        segments = self._segments(key)
        if segments is None:  # cannot happen: only keys under the prefix are stored
            return
        path = [self._root]
        for seg in segments:
            nxt = path[-1].children.get(seg)
            if nxt is None:
                return
            path.append(nxt)
        node = path[-1]
        if node.record is None or node.record.key != key:
            return  # the node answers for another spelling of this key (rule 1)
        if node.record.group:
            self._grouped -= 1
        node.record = None
        # Prune empty nodes so that "node exists" means "some record at or below it".
        for depth in range(len(segments), 0, -1):
            node = path[depth]
            if node.record is not None or node.children:
                break
            parent = path[depth - 1]
            del parent.children[segments[depth - 1]]
            if not parent.children:
                parent.children = _NO_CHILDREN

    def _segments(self, key: str) -> tuple[str, ...] | None:
        """Lower-cased trie path of a key; None when it is not a record key under the prefix."""
        if not key.startswith(self._head):
            return None
        parts = key[len(self._head):].lower().split("/")
        if "" in parts:
            parts = [seg for seg in parts if seg]
        return tuple(parts) or None

    # -- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> dict[str, msg.Service]:
        """A copy of every good record by etcd key."""
        return dict(self._records)

    def lookup(self, name: str, exact: bool = False) -> list[msg.Service]:
        """The records a DNS name answers with (rules 2-5); [] for names that cannot exist."""
        try:
            segments = tuple(reversed(msg.labels(name)))
        except msg.PathError:
            return []
        return self.find(segments, exact)

    def exists(self, name: str) -> bool:
        """Whether any record is stored at or below the name (hidden ``_`` records included)."""
        try:
            segments = tuple(reversed(msg.labels(name)))
        except msg.PathError:
            return False
        return self.exists_path(segments)

    def find(self, segments: tuple[str, ...], exact: bool = False,
             limit: int | None = None) -> list[msg.Service]:
        """lookup() by path segments (lower-case labels, reversed: ``("local", "cluster", ...)``).

        ``limit`` caps the number of records returned (the first ones in trie order).
        """
        # With no grouped records, stopping early cannot change which records survive.
        stop = limit if (limit is not None and self._grouped == 0) else None
        found: list[msg.Service] = []
        for node in self._matches(segments):
            if exact:
                if node.record is not None:
                    found.append(node.record)
            else:
                _collect(node, found, stop)
            if stop is not None and len(found) >= stop:
                break
        if self._grouped and len(found) > 1:
            found = _group(found)
        if limit is not None and len(found) > limit:
            del found[limit:]
        return found

    def children(self, segments: tuple[str, ...]) -> list[str]:
        """The labels directly below a path (no wildcards), in key order, ``_`` ones included."""
        node: _Node | None = self._root
        for seg in segments:
            node = node.children.get(seg)  # type: ignore[union-attr]
            if node is None:
                return []
        return sorted(node.children)  # type: ignore[union-attr]

    def exists_path(self, segments: tuple[str, ...]) -> bool:
        """exists() by path segments; with wildcards, any matching name counts."""
        for _ in self._matches(segments):
            return True
        return False

    def _matches(self, segments: tuple[str, ...]) -> Iterable[_Node]:
        """The trie nodes of the names a (possibly wildcard) path denotes."""
        node: _Node | None = self._root
        for i, seg in enumerate(segments):
            if seg in _WILDCARDS:
                return self._wild(node, segments, i)  # type: ignore[arg-type]
            node = node.children.get(seg)  # type: ignore[union-attr]
            if node is None:
                return ()
        return (node,)  # type: ignore[return-value]

    def _wild(self, start: _Node, segments: tuple[str, ...], first: int) -> list[_Node]:
        level = [start]
        for seg in segments[first:]:
            nxt: list[_Node] = []
            if seg in _WILDCARDS:
                for node in level:
                    nxt.extend(child for label, child in _ordered(node.children) if label[:1] != "_")
            else:
                for node in level:
                    child = node.children.get(seg)
                    if child is not None:
                        nxt.append(child)
            if not nxt:
                return []
            level = nxt
        return level


def _text(key: str | bytes) -> str:
    """etcd clients hand out bytes keys; the store works on text."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def _collect(node: _Node, out: list[msg.Service], stop: int | None) -> None:
    """Append every record at or below node, skipping ``_`` segments below it."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if cur.record is not None:
            out.append(cur.record)
            if stop is not None and len(out) >= stop:
                return
        if cur.children:
            stack.extend(child for label, child in reversed(_ordered(cur.children)) if label[:1] != "_")


def _ordered(children: dict[str, _Node]) -> list[tuple[str, _Node]]:
    """Children in key order (rule 8): insertion order follows the history of puts."""
    items = list(children.items())
    if len(items) > 1:
        items.sort(key=_label)
    return items


def _label(item: tuple[str, _Node]) -> str:
    return item[0]


def _group(records: list[msg.Service]) -> list[msg.Service]:
    """SkyDNS msg.Group: the shallowest records' group filters the rest (rule 5)."""
    depths = [r.key.count("/") for r in records]
    top = min(depths)
    groups = {r.group for r, d in zip(records, depths) if d == top and r.group}
    if len(groups) != 1:
        return records
    (group,) = groups
    return [r for r in records if not r.group or r.group == group]
