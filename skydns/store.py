"""The in-memory mirror of the etcd prefix: etcd key -> msg.Service, indexed for lookups.

PURE: no I/O, no clock, no randomness. The etcd watch (skydns.etcdwatch) feeds it with
replace() (or begin_replace()/Load.add()/finish_replace(), page by page) and put()/delete();
answering reads it with find()/lookup()/exists().

Rules of this module:

1. Keys are stored by path: the segments below ``/<prefix>/`` (the labels of the name,
   reversed), lower-cased and joined by NUL, in one table sorted by path. NUL sorts below
   every other character, so the table is in segment order and a name's records (the name
   and every key below it) are one contiguous range. A lookup seeks to the queried name
   (binary search) and never reads keys that are not at or below it. Segments are matched
   case-insensitively; ``bad``, ``records()`` and ``Service.key`` keep the etcd key as
   written. (Two keys that differ only in letter case share one path: the last put answers.)
   A key with a NUL or newline character in it cannot be stored and is reported in ``bad``.
2. What a name answers with (DESIGN section 3): every record at or below its key, except
   records reached through a segment starting with ``_`` *below* the queried name (the etcd
   v2 hidden-key rule kube2sky's SRV layout ``<svc>/_tcp/_http/<leaf>`` relied on). Labels
   written in the query itself may start with ``_``. A hidden subtree is skipped with one
   seek past it, never read.
3. Wildcards ``*`` and ``any`` in the query match exactly one segment, anywhere in the name
   (never a ``_`` segment); deeper records below a match are included as for plain names.
   The distinct segments at a wildcard are visited with one seek each.
4. ``exact=True`` returns only records whose key is the name itself (no subtree).
5. SkyDNS ``group``: among the records found, the group of the shallowest records decides;
   if set, only records of that group or without a group are returned; if the shallowest
   records disagree, grouping is ignored.
6. A bad value (msg.RecordError) removes the previous record of that key (etcd no longer
   holds it) and is remembered in ``bad`` with its error text; a later good put or a delete
   clears it. Nothing here raises on bad data: whatever the decoder throws counts as a bad
   value, and a snapshot with bad values loads every good one.
7. ``generation`` goes up by one on every change; ``revision`` is the etcd revision the mirror
   reflects (the SOA serial).
8. Records come out in key order (segments sorted, a record before the records below it),
   whatever order they were written in: a mirror built by the watch answers exactly like one
   built by a relist (etcd ranges are key-sorted), e.g. when answering picks the first alias.
9. Compact: no Python object per key. The table is a list of blocks of up to 128 entries;
   a block is the paths joined into one string, the hosts joined into one string, and an
   array of shape numbers, where a shape is every other field of a record (port, priority,
   weight, text, mail, ttl, targetstrip, group), stored once and counted (the records
   kube2sky writes share a handful of shapes). The joined paths are stored without their
   common prefix (written once in front), the joined hosts without their common prefix and
   suffix (a block of SRV targets or PTR names shares ``.<svc>.<ns>.svc.<zone>``, one of
   addresses shares ``10.64.2.``): about 45 bytes per key in all. find() builds the
   msg.Service objects it returns; their ``key`` is the path turned back into an etcd key.
10. A snapshot is built aside: replace() fills a new table, page by page through
    begin_replace()/Load.add(), while the current one keeps answering, and finish_replace()
    swaps it in at once. A view never shows half a snapshot; ``loaded`` turns true when the
    first snapshot is in.
11. ``on_change``: callables called after each put()/delete() of a key under the prefix with
    its lower-cased path segments below the prefix (``tuple[str, ...]``; a bad value counts: it
    removed the key's previous record), and after each replace with None (everything changed).
    The answer cache uses this to drop only what a change can affect. A hook that raises is
    logged and does not stop the others.
12. A load decodes a batch of keys and values at once when it can: the keys joined into one
    string (one prefix check, one lower(), one split), the values matched by one regular
    expression over the batch (kube2sky's form, the host checked as msg.decode checks it),
    each distinct rest of a value decoded once by msg.decode, the entries cut into blocks
    without a Python object per key. A batch it cannot take whole (a key that is not plain
    ASCII under the prefix, the same path twice) is decoded key by key; a value it cannot
    take goes through the one-value decoder. Either way the result, ``bad`` included, is
    exactly what put() gives key by key.
13. Reading keeps bounded caches that need no invalidation: a block's split paths and hosts
    are kept with the joined string they came from (a change gives the block a new one; a
    put or delete keeps the split it made, so the read after it splits nothing), and
    up to ``_RECORDS`` msg.Service objects built by find() are kept by path with the host and
    shape they were built from; one is handed out again only while the path still holds that
    host and an equal shape (shapes are immutable tuples), so it equals a newly built one.
    Used only when no key has an odd spelling or host (then every record is built). A run of
    entries is compared and reused at once, and the next hidden key of a run is found in the
    run's paths joined, so a name with many records costs few Python steps per record.
14. find() keeps what it returned for a path without wildcards (per exact and limit), and
    gives a copy of it again until a put, delete or replace touches that path or a key below
    it: a change of a key drops the kept results of its own path and of every path above it
    (the only finds it can change), a replace drops them all. At most ``_FOUND`` records are
    held (the lists are dropped together when full), so the glue of an SRV answer with many
    targets is read once and then only for the targets that changed. A new value for a key
    already stored (what a watch event mostly is) changes which records those finds hold in
    nothing when no key has an odd spelling or host and no record has a group afterwards (at
    most one had before: no group rule filtered anything): the new record then takes the old
    one's place in the kept lists that hold it, instead of dropping them (a 100-address name
    is not read again after one address changed), when they were read since the last change
    (else they are dropped: a name nobody asks for costs one patch, not one per change). exists_path() of a path without wildcards is
    kept the same way (dropped for the changed key's path and the paths above it, kept when
    only a stored key's value changed), so the kube2sky mark and the NXDOMAIN/NODATA test cost
    a dict lookup.
"""

from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import functools
import itertools
import json
import logging
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from skydns import msg

logger = logging.getLogger(__name__)

_WILDCARDS = msg.WILDCARDS

_SEP = "\0"    # joins the segments of a path: sorts below every label character
_NL = "\n"     # joins the entries of a block
_PAST = "\x01"  # path + _PAST sorts after the path's whole subtree (path + _SEP + ...)
_HIDDEN = "\0_"  # a segment starting with "_" below the first one of a path
_ODD = "\x1f"  # the host stored in a block for a host kept aside (it holds _NL or _ODD)
_BLOCK = 64     # entries per block built by a load
_MAX_BLOCK = 128  # a block that grows past this is split in two
_CUT_MASK = 63   # a load starts a block at a path whose hash has these bits clear (rule 12)
_MIN_BLOCK = 16  # ... and that is at least this many entries after the block's start
_BATCH = 4096   # a load decodes its items in batches of this many (rule 12)
_CACHE = 64     # split blocks kept (per column)
_RECORDS = 2048  # records kept built (rule 13): about 1 MB at most
_FOUND = 4096   # records (and paths) held by kept find() results (rule 14)

_FIELDS = tuple(f.name for f in dataclasses.fields(msg.Service))
_SHAPE_FIELDS = tuple(name for name in _FIELDS if name not in ("host", "key"))
# The fast constructor and the fast decoder know msg.Service's fields in this order.
_KNOWN = _FIELDS == ("host", "port", "priority", "weight", "text", "mail", "ttl", "targetstrip",
                     "group", "key")
_FAST_KEYS = frozenset({"host", "port", "priority", "weight", "ttl"})
_GROUP = _SHAPE_FIELDS.index("group")
_scan = json.JSONDecoder().scan_once
_KEY_OF = operator.attrgetter("key")
# msg.decode's host rule (an IP address or a host name), for the fast decoder: IPv4 addresses
# and host names both match msg's name pattern; anything else (IPv6, odd) goes to msg.decode.
_HOST = getattr(msg, "_HOST_NAME", None)
_HOST_MAX = getattr(msg, "_MAX_NAME_TEXT", 0)
# A load's fast path (rule 12): kube2sky's values, one per line of a batch joined by newlines.
# {"host":"<letters, digits, _*.->" then integer fields: the host's labels are checked for the
# whole batch at once (_bad_host_names: exactly msg.decode's host name rule, an IPv4 address
# being one), and the rest of the value by msg.decode, once per distinct rest in the batch
# (decoding {"host":"" + rest gives every other field as the whole value would: the host is a
# plain string and a later "host" field, an integer, is refused either way). Anything else
# goes through _decode one value at a time.
_FAST_TEXT = r'\{"host":"([A-Za-z0-9_*.-]{1,%d})"((?:,"[a-z]+":-?[0-9]+)*\})' % _HOST_MAX
_FAST_HEAD = '{"host":"'
_NL_HEAD = _NL + _FAST_HEAD
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_*.-"  # _FAST_TEXT's host
_NL_BYTES = b"\n"
_FAST_REST = re.compile(r'(?:,"[a-z]+":-?[0-9]+)*\}')  # what follows the host's closing quote
_FIRST = operator.itemgetter(0)
_THIRD = operator.itemgetter(2)
_LONG_LABEL = re.compile(r"[^.\n]{64}")
_FAST_ONE = re.compile(_FAST_TEXT)

Shape = tuple  # (port, priority, weight, text, mail, ttl, targetstrip, group)
Hook = Callable[[tuple[str, ...] | None], object]


def _decode(value: bytes | str, key: str) -> tuple[str, Shape]:
    """(host, shape) of an etcd value.

    Raises:
        msg.RecordError: the value is not a valid record (whatever the decoder raised).
    """
    if _KNOWN:
        # kube2sky writes compact JSON: one C scan of the object, no json.loads wrapper.
        try:
            text = value.decode() if isinstance(value, bytes) else value
            obj, end = _scan(text, 0)
            if end != len(text):
                obj = None
        except Exception:  # noqa: BLE001 - msg.decode below gives the error text
            obj = None
        # The shape kube2sky writes: checked exactly as msg.decode checks it, without
        # building a msg.Service; anything else goes through msg.decode.
        if type(obj) is dict and obj.keys() <= _FAST_KEYS:
            host = obj.get("host", "")
            port = obj.get("port", 0)
            priority = obj.get("priority", 0)
            weight = obj.get("weight", 0)
            ttl = obj.get("ttl", 0)
            if (type(host) is str and (not host or (_HOST is not None and len(host) <= _HOST_MAX
                                                     and _HOST.match(host) is not None))
                    and type(port) is int and type(priority) is int
                    and type(weight) is int and type(ttl) is int and 0 <= port <= 0xFFFF
                    and 0 <= priority <= 0xFFFF and 0 <= weight <= 0xFFFF and 0 <= ttl <= 0xFFFFFFFF):
                return host, (port, priority, weight, "", False, ttl, 0, "")
    try:
        record = msg.decode(value, key=key)
    except msg.RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - rule 6: any decoder failure is a bad value
        raise msg.RecordError(f"{key or 'value'}: cannot decode: {type(exc).__name__}: {exc}") from None
    return record.host, tuple(getattr(record, name) for name in _SHAPE_FIELDS)


if _KNOWN:
    _new = object.__new__
    (_set_host, _set_port, _set_priority, _set_weight, _set_text, _set_mail, _set_ttl,
     _set_targetstrip, _set_group, _set_key) = (getattr(msg.Service, name).__set__ for name in _FIELDS)

    def _service(host: str, shape: Shape, key: str) -> msg.Service:
        """msg.Service(host, *shape, key=key), about three times faster than its __init__."""
        rec = _new(msg.Service)
        _set_host(rec, host)
        _set_port(rec, shape[0])
        _set_priority(rec, shape[1])
        _set_weight(rec, shape[2])
        _set_text(rec, shape[3])
        _set_mail(rec, shape[4])
        _set_ttl(rec, shape[5])
        _set_targetstrip(rec, shape[6])
        _set_group(rec, shape[7])
        _set_key(rec, key)
        return rec
else:  # pragma: no cover - msg.Service changed its fields; stay correct, only slower
    def _service(host: str, shape: Shape, key: str) -> msg.Service:
        return msg.Service(host=host, key=key, **dict(zip(_SHAPE_FIELDS, shape)))  # type: ignore[arg-type]


def _split(cache: dict[int, tuple[str, list[str]]], b: int, joined: str,
           unpack: Callable[[str], list[str]]) -> list[str]:
    """Block b's joined string unpacked, kept in cache with the string it came from.

    A change gives its block a new string, so a split of a block that changed (or moved) is
    never used, and a change costs the splits of other blocks nothing."""
    got = cache.get(b)
    if got is None or got[0] is not joined:
        if len(cache) >= _CACHE:
            cache.clear()
        got = cache[b] = (joined, unpack(joined))
    return got[1]


class _Table:
    """The sorted table of one snapshot (rules 1 and 9)."""

    __slots__ = ("first", "keys", "hosts", "shapes", "shape_ids", "shape_list", "shape_refs",
                 "free", "odd", "spelling", "count", "grouped", "keep_unused", "_kc", "_hc", "_rc", "_rs")

    def __init__(self) -> None:
        self.first: list[str] = []               # the first path of each block (for bisect)
        self.keys: list[str] = []                # per block: its paths joined by _NL
        self.hosts: list[str] = []               # per block: its hosts joined by _NL
        self.shapes: list[array.array] = []      # per block: the shape number of each entry
        self.shape_ids: dict[Shape, int] = {}
        self.shape_list: list[Shape | None] = []
        self.shape_refs: list[int] = []
        self.free: list[int] = []                # unused shape numbers
        self.odd: dict[str, str] = {}            # path -> a host holding _NL or _ODD
        self.spelling: dict[str, str] = {}       # path -> etcd key when it is not the plain one
        self.count = 0
        self.grouped = 0                         # records with a non-empty group
        self.keep_unused = False                 # a shape whose last record goes stays numbered
        self._kc: dict[int, tuple[str, list[str]]] = {}  # block -> (its paths joined, split)
        self._hc: dict[int, tuple[str, list[str]]] = {}  # block -> (its hosts joined, split)
        self._rs: dict[str, tuple[str, Shape]] = {}  # path -> (host, shape) of the record built
        self._rc: dict[str, msg.Service] = {}  # path -> the record built from them (rule 13)

    # -- shapes -------------------------------------------------------------------------

    def _ref(self, shape: Shape) -> int:
        sid = self.shape_ids.get(shape)
        if sid is None:
            if self.free:
                sid = self.free.pop()
                self.shape_list[sid] = shape
                self.shape_refs[sid] = 0
            else:
                sid = len(self.shape_list)
                self.shape_list.append(shape)
                self.shape_refs.append(0)
            self.shape_ids[shape] = sid
        self.shape_refs[sid] += 1
        if shape[_GROUP]:
            self.grouped += 1
        return sid

    def _sid(self, shape: Shape) -> int:
        """The number of a shape, registered without a reference (a load's table keeps
        unused shapes until it is complete: keep_unused)."""
        sid = self.shape_ids.get(shape)
        if sid is None:
            sid = self._ref(shape)
            self._unref_only(sid)
        return sid

    def _unref_only(self, sid: int) -> None:
        shape = self.shape_list[sid]
        assert shape is not None
        if shape[_GROUP]:
            self.grouped -= 1
        self.shape_refs[sid] -= 1

    def _drop_unused(self, sids: Iterable[int]) -> None:
        """Free the shapes among sids that no entry uses."""
        for sid in sids:
            if not self.shape_refs[sid] and self.shape_list[sid] is not None:
                del self.shape_ids[self.shape_list[sid]]
                self.shape_list[sid] = None
                self.free.append(sid)

    def _unref(self, sid: int) -> None:
        self._unref_only(sid)
        if not self.keep_unused:
            self._drop_unused((sid,))

    # -- reading ------------------------------------------------------------------------

    def _keys_of(self, b: int) -> list[str]:
        return _split(self._kc, b, self.keys[b], _unpack_keys)

    def _hosts_of(self, b: int) -> list[str]:
        return _split(self._hc, b, self.hosts[b], _unpack_hosts)

    def seek(self, path: str) -> tuple[int, int]:
        """The position (block, index) of the first path >= path; (len(blocks), 0) past the end."""
        b = bisect.bisect_right(self.first, path) - 1
        if b < 0:
            return 0, 0
        keys = self._keys_of(b)
        i = bisect.bisect_left(keys, path)
        if i == len(keys):
            return b + 1, 0
        return b, i

    def at(self, b: int, i: int) -> str | None:
        """The path at a position from seek(), None past the end."""
        return self._keys_of(b)[i] if b < len(self.first) else None

    def exists(self, path: str) -> bool:
        """Whether any path is at or below path."""
        if not path:
            return True
        b, i = self.seek(path)
        found = self.at(b, i)
        return found is not None and (found == path or found.startswith(path + _SEP))

    def record(self, b: int, i: int, path: str, head: str) -> msg.Service:
        host = self._hosts_of(b)[i]
        if host == _ODD:
            host = self.odd[path]
        key = self.spelling.get(path) if self.spelling else None
        if key is None:
            key = head + path.replace(_SEP, "/")
        shape = self.shape_list[self.shapes[b][i]]
        return _service(host, shape, key)  # type: ignore[arg-type]

    def key_of(self, path: str, head: str) -> str:
        key = self.spelling.get(path) if self.spelling else None
        return key if key is not None else head + path.replace(_SEP, "/")

    def get(self, path: str) -> tuple[int, int] | None:
        b, i = self.seek(path)
        return (b, i) if self.at(b, i) == path else None

    def collect(self, path: str, out: list[msg.Service], stop: int | None, head: str) -> None:
        """Append every record at or below path, skipping ``_`` segments below it (rule 2).

        Block by block: the end of path's range in a block is one bisect (path + _PAST sorts
        after path's whole subtree and before anything else), and the records between two
        hidden subtrees are built in one go.
        """
        first = self.first
        nb = len(first)
        if not nb or (stop is not None and len(out) >= stop):
            return
        b = bisect.bisect_right(first, path) - 1
        if b < 0:
            b, i = 0, 0
            keys = self._keys_of(0)
        else:
            keys = self._keys_of(b)
            i = bisect.bisect_left(keys, path)
        if path:
            after = path + _PAST
            look = len(path)  # where "\0_" marks a hidden segment below path
        else:
            after = None
            look = 0
        plain = not self.spelling and not self.odd
        clean = _HIDDEN not in path  # then a hidden segment in a key is one below path
        if plain and after is not None:
            # the usual name: its whole range in one block, nothing hidden in it
            n = len(keys)
            j = bisect.bisect_left(keys, after, i)
            if j < n or b + 1 == nb:
                # runs of visible keys, each hidden subtree skipped with one bisect; the next
                # hidden key is found in the run's paths joined (below path: past ``look``)
                while i < j:
                    run = _NL.join(keys[i:j]) if clean else _NL.join([k[look:] for k in keys[i:j]])
                    h = run.find(_HIDDEN)
                    x = j if h < 0 else i + run.count(_NL, 0, h)
                    if x > i:
                        if stop is not None and x - i >= stop - len(out):
                            self._build(b, keys, i, i + stop - len(out), out, head)
                            return
                        self._build(b, keys, i, x, out, head)
                    if x == j:
                        return
                    k = keys[x]
                    end = k.find(_SEP, k.find(_HIDDEN, look) + 1)
                    i = bisect.bisect_left(keys, (k if end < 0 else k[:end]) + _PAST, x)
                return
        shape_list = self.shape_list
        while True:
            n = len(keys)
            j = n if after is None else bisect.bisect_left(keys, after, i)
            while i < j:
                # the run of visible keys from i, up to the next hidden one
                x = i
                skip = None
                if look:
                    # the next hidden key, found in the run's paths joined (as above)
                    run = _NL.join(keys[i:j]) if clean else _NL.join([k[look:] for k in keys[i:j]])
                    h = run.find(_HIDDEN)
                    if h < 0:
                        x = j
                    else:
                        x = i + run.count(_NL, 0, h)
                        k = keys[x]
                        end = k.find(_SEP, k.find(_HIDDEN, look) + 1)
                        skip = (k if end < 0 else k[:end]) + _PAST
                else:
                    while x < j:  # below the root: any "_" segment hides
                        k = keys[x]
                        hidden = 0 if k[:1] == "_" else k.find(_HIDDEN)
                        if hidden >= 0:
                            hidden += 1
                            end = k.find(_SEP, hidden)
                            skip = (k if end < 0 else k[:end]) + _PAST
                            break
                        x += 1
                if x > i:
                    if stop is not None and x - i > stop - len(out):
                        x = i + stop - len(out)
                        skip = None
                        j = x
                    if plain:
                        self._build(b, keys, i, x, out, head)
                    else:
                        for y in range(i, x):
                            out.append(self.record(b, y, keys[y], head))
                    if stop is not None and len(out) >= stop:
                        return
                if skip is None:
                    i = x
                    continue
                i = bisect.bisect_left(keys, skip, x)
                if i == n:  # the hidden subtree goes on in the next blocks
                    b, i = self.seek(skip)
                    if b >= nb:
                        return
                    keys = self._keys_of(b)
                    break
            else:
                if j < n:
                    return  # path's range ends in this block
                b += 1
                if b >= nb:
                    return
                keys = self._keys_of(b)
                i = 0

    def _build(self, b: int, keys: list[str], i: int, j: int, out: list[msg.Service], head: str) -> None:
        """Append the records of entries i..j-1 of block b (no odd spelling or host in the table).

        Rule 13: a record built before is reused while its host and shape are the stored ones
        (then it equals a new one). The entries are compared all at once (C loops: map over
        the run), and only those that differ are built."""
        shape_list = self.shape_list
        state, built = self._rs, self._rc
        paths = keys[i:j]
        now = list(zip(self._hosts_of(b)[i:j], map(shape_list.__getitem__, self.shapes[b][i:j])))
        same = list(map(operator.eq, map(state.get, paths), now))
        records = list(map(built.get, paths))
        y = -1
        for _ in range(same.count(False)):
            y = same.index(False, y + 1)
            k = paths[y]
            host, shape = now[y]
            rec = records[y] = _service(host, shape, head + k.replace(_SEP, "/"))  # type: ignore[arg-type]
            if len(built) >= _RECORDS:
                built.clear()
                state.clear()
            state[k] = now[y]
            built[k] = rec
        out.extend(records)

    def children(self, path: str, hidden: bool = False) -> list[str]:
        """The paths of the segments right below path, in order; ``_`` ones only with hidden."""
        sub = path + _SEP if path else ""
        start = len(sub)
        out: list[str] = []
        b, i = self.seek(sub)
        while True:
            k = self.at(b, i)
            if k is None or not k.startswith(sub):
                return out
            end = k.find(_SEP, start)
            child = k if end < 0 else k[:end]
            if hidden or child[start] != "_":
                out.append(child)
            b, i = self.seek(child + _PAST)

    def items(self, head: str) -> Iterator[tuple[str, msg.Service]]:
        for b in range(len(self.first)):
            for i, path in enumerate(_unpack_keys(self.keys[b])):
                rec = self.record(b, i, path, head)
                yield rec.key, rec

    # -- writing ------------------------------------------------------------------------

    def _changed(self) -> None:
        """Nothing to drop: the split blocks check the joined strings they came from (_keys_of)."""

    def _host(self, path: str, host: str) -> str:
        if self.odd:
            self.odd.pop(path, None)
        if _NL in host or _ODD in host:
            self.odd[path] = host
            return _ODD
        return host

    def put(self, path: str, host: str, shape: Shape, spelling: str | None) -> None:
        """Store one record at path (replacing the one there)."""
        sid = self._ref(shape)
        host = self._host(path, host)
        if spelling is not None:
            self.spelling[path] = spelling
        elif self.spelling:
            self.spelling.pop(path, None)
        self._changed()
        if not self.first:
            self._set_block(0, [path], [host], array.array("I", (sid,)), insert=True)
            self.count += 1
            return
        b = max(bisect.bisect_right(self.first, path) - 1, 0)
        keys = self._keys_of(b)  # the cached split: copied before any change
        hosts = self._hosts_of(b).copy()
        shapes = self.shapes[b]
        i = bisect.bisect_left(keys, path)
        if i < len(keys) and keys[i] == path:
            # A new value for a stored path (what a watch event mostly is): only the block's
            # hosts change, and their new split is kept for the next reader or put.
            old = shapes[i]
            hosts[i] = host
            shapes[i] = sid
            self.hosts[b] = _pack_hosts(hosts)
            self._keep(b, None, hosts)  # the next read needs no split (rule 13)
            self._unref(old)
            return
        keys = keys.copy()
        keys.insert(i, path)
        hosts.insert(i, host)
        shapes.insert(i, sid)
        self.count += 1
        if len(keys) <= _MAX_BLOCK:
            self._set_block(b, keys, hosts, shapes)
            self._keep(b, keys, hosts)
            return
        half = len(keys) // 2
        self._set_block(b, keys[:half], hosts[:half], shapes[:half])
        self._set_block(b + 1, keys[half:], hosts[half:], shapes[half:], insert=True)

    def remove(self, path: str) -> bool:
        """Drop the record at path; False when there is none."""
        where = self.get(path)
        if where is None:
            return False
        b, i = where
        self._changed()
        keys = _unpack_keys(self.keys[b])
        hosts = _unpack_hosts(self.hosts[b])
        shapes = self.shapes[b]
        self._unref(shapes[i])
        del keys[i], hosts[i], shapes[i]
        self.count -= 1
        if self.odd:
            self.odd.pop(path, None)
        if self.spelling:
            self.spelling.pop(path, None)
        if keys:
            self._set_block(b, keys, hosts, shapes)
            self._keep(b, keys, hosts)
        else:
            del self.first[b], self.keys[b], self.hosts[b], self.shapes[b]
        return True

    def _keep(self, b: int, keys: list[str] | None, hosts: list[str]) -> None:
        """Keep the split of block b just written (lists no one changes any more), bounded as
        the reads keep theirs (rule 13)."""
        if keys is not None:
            if len(self._kc) >= _CACHE:
                self._kc.clear()
            self._kc[b] = (self.keys[b], keys)
        if len(self._hc) >= _CACHE:
            self._hc.clear()
        self._hc[b] = (self.hosts[b], hosts)

    def _set_block(self, b: int, keys: list[str], hosts: list[str], shapes: array.array,
                   insert: bool = False) -> None:
        values = (keys[0], _pack_keys(keys), _pack_hosts(hosts), shapes)
        if insert:
            for column, value in zip((self.first, self.keys, self.hosts, self.shapes), values):
                column.insert(b, value)  # type: ignore[attr-defined]
        else:
            self.first[b], self.keys[b], self.hosts[b], self.shapes[b] = values

    def extend(self, entries: list[tuple[str, str, Shape, str | None]]) -> None:
        """Add entries sorted by path; those after the last path become whole new blocks."""
        cut = 0
        if self.first:
            last = self._keys_of(len(self.first) - 1)[-1]
            cut = bisect.bisect_right(entries, last, key=operator.itemgetter(0))
            for entry in entries[:cut]:
                self.put(*entry)
        self._changed()
        keys: list[str] = []
        hosts: list[str] = []
        shapes = array.array("I")
        for path, host, shape, spelling in itertools.islice(entries, cut, None):
            sid = self._ref(shape)
            host = self._host(path, host)
            if spelling is not None:
                self.spelling[path] = spelling
            elif self.spelling:
                self.spelling.pop(path, None)
            if keys and keys[-1] == path:  # two spellings of one key: the last one answers
                self._unref(shapes[-1])
                hosts[-1] = host
                shapes[-1] = sid
                continue
            if len(keys) == _BLOCK:
                self._set_block(len(self.first), keys, hosts, shapes, insert=True)
                keys, hosts, shapes = [], [], array.array("I")
            keys.append(path)
            hosts.append(host)
            shapes.append(sid)
            self.count += 1
        if keys:
            self._set_block(len(self.first), keys, hosts, shapes, insert=True)


    def append_sorted(self, paths: list[str], hosts: list[str], sids: list[int],
                      spellings: list[str | None] | None, reuse: dict[str, tuple[str, str, str]] | None = None,
                      hold: bool = False) -> int:
        """Add entries with strictly increasing paths, shapes numbered by _sid (rule 12).

        Those up to the table's last path are put one by one; the rest become new blocks, cut
        where _cuts says. A block equal to one in ``reuse`` (joined paths -> the first path,
        joined paths and joined hosts of a block of the previous snapshot) keeps that block's
        strings. ``hold``: the entries after the last cut are not added; their start is
        returned (len(paths) when everything was added), for the caller to pass them again
        in front of the next batch.
        """
        cut = 0
        if self.first:
            cut = bisect.bisect_right(paths, self._keys_of(len(self.first) - 1)[-1])
            shape_list = self.shape_list
            for i in range(cut):
                self.put(paths[i], hosts[i], shape_list[sids[i]],  # type: ignore[arg-type]
                         spellings[i] if spellings is not None else None)
        self._changed()
        n = len(paths)
        if cut == n:
            return n
        starts = _cuts(paths, cut, n)
        end = starts.pop()  # n
        if hold:
            end = starts.pop()  # the last block's start: held back
            if end == cut:
                return end
        refs = self.shape_refs
        for sid, count in collections.Counter(itertools.islice(sids, cut, end)).items():
            refs[sid] += count
            if self.shape_list[sid][_GROUP]:  # type: ignore[index]
                self.grouped += count
        if spellings is not None:
            for i in range(cut, end):
                if spellings[i] is not None:
                    self.spelling[paths[i]] = spellings[i]  # type: ignore[assignment]
        first, keys_col, hosts_col, shapes_col = self.first, self.keys, self.hosts, self.shapes
        joined = _NL.join(itertools.islice(hosts, cut, end))
        plain = _ODD not in joined and joined.count(_NL) == end - cut - 1  # no host to keep aside
        for start, stop in zip(starts, [*starts[1:], end]):
            block_keys = _pack_keys(paths[start:stop])
            some = hosts[start:stop]
            if not plain:
                joined = _NL.join(some)
                if _ODD in joined or joined.count(_NL) != stop - start - 1:
                    some = [self._host(paths[i], hosts[i]) for i in range(start, stop)]
            block_hosts = _pack_hosts(some)
            old = reuse.get(block_keys) if reuse else None
            if old is None:
                first.append(paths[start])
                keys_col.append(block_keys)
            else:  # the previous snapshot's strings: a relist costs only the blocks that changed
                first.append(old[0])
                keys_col.append(old[1])
                if old[2] == block_hosts:
                    block_hosts = old[2]
            hosts_col.append(block_hosts)
            shapes_col.append(array.array("I", sids[start:stop]))
        self.count += end - cut
        return end


def _cuts(paths: list[str], start: int, n: int) -> list[int]:
    """Where a load starts the blocks of paths[start:n], and n: at a path whose hash ends in
    six zero bits (at least _MIN_BLOCK entries into a block, at most _MAX_BLOCK).

    Content-defined: a relist of mostly the same data cuts the same blocks, whatever was
    added or removed before them, so their strings can be the previous snapshot's.
    """
    starts = [start]
    last = start
    low_bits = map(operator.and_, map(hash, itertools.islice(paths, start, n)), itertools.repeat(_CUT_MASK))
    for i in itertools.compress(range(start, n), map(operator.not_, low_bits)):
        while i - last > _MAX_BLOCK:
            last += _MAX_BLOCK
            starts.append(last)
        if i - last >= _MIN_BLOCK:
            starts.append(i)
            last = i
    while n - last > _MAX_BLOCK:
        last += _MAX_BLOCK
        starts.append(last)
    starts.append(n)
    return starts


def _common(a: str, b: str) -> str:
    """The longest common prefix of two strings (a binary search of C comparisons)."""
    if b.startswith(a):
        return a
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if b.startswith(a[:mid]):
            low = mid
        else:
            high = mid - 1
    return a[:low]


def _pack_keys(paths: list[str]) -> str:
    """A block's sorted paths as stored (rule 9): their common prefix, then each path
    without it, all joined by newlines."""
    prefix = _common(paths[0], paths[-1])
    joined = _NL.join(paths)
    if not prefix:
        return _NL + joined
    return prefix + _NL + joined[len(prefix):].replace(_NL + prefix, _NL)


def _unpack_keys(text: str) -> list[str]:
    prefix, _, body = text.partition(_NL)
    return (prefix + body.replace(_NL, _NL + prefix)).split(_NL) if prefix else body.split(_NL)


def _pack_hosts(hosts: list[str]) -> str:
    """A block's hosts as stored (rule 9): their common prefix, their common suffix, then each
    host without them, all joined by newlines (no host holds a newline: see _host)."""
    prefix = _common(min(hosts), max(hosts))
    skip = len(prefix)
    room = min(map(len, hosts)) - skip
    suffix = ""
    if room:
        first, last = hosts[0], hosts[-1]
        suffix = _common(first[:skip - 1 if skip else None:-1], last[:skip - 1 if skip else None:-1])[:room][::-1]
        if suffix and not all(map(str.endswith, hosts, itertools.repeat(suffix))):
            suffix = os.path.commonprefix([host[:skip - 1 if skip else None:-1] for host in hosts])[:room][::-1]
    joined = _NL.join(hosts)
    if not prefix and not suffix:
        return _NL + _NL + joined
    body = joined[skip:len(joined) - len(suffix)].replace(suffix + _NL + prefix, _NL)
    return prefix + _NL + suffix + _NL + body


def _unpack_hosts(text: str) -> list[str]:
    prefix, suffix, body = text.split(_NL, 2)
    if not prefix and not suffix:
        return body.split(_NL)
    return (prefix + body.replace(_NL, suffix + _NL + prefix) + suffix).split(_NL)


class Load:
    """A snapshot being read (Store.begin_replace); the store keeps answering from the last one."""

    def __init__(self, view: Store) -> None:
        self._view = view
        self._table = _Table()
        self._table.keep_unused = True  # shapes numbered by _sid for entries not added yet
        self.bad: dict[str, str] = {}
        self.read = 0  # keys handed to add()
        # The entries after the last block cut of the batches so far (paths, hosts, shape
        # numbers, spellings), added in front of the next batch or by finish().
        self._tail: tuple[list[str], list[str], list[int], list[str | None] | None] | None = None
        self._reuse: dict[str, tuple[str, str, str]] | None = None

    def add(self, items: Iterable[tuple[str | bytes, bytes | str]]) -> None:
        """Decode a page of ``(key, value)`` pairs into the snapshot (bad ones go to ``bad``)."""
        it = iter(items)
        while batch := list(itertools.islice(it, _BATCH)):
            keys, values = zip(*batch)
            self.add_columns(keys, values)  # type: ignore[arg-type]

    def add_columns(self, keys: Sequence[str | bytes], values: Sequence[bytes | str]) -> None:
        """``add(zip(keys, values))`` for a page that comes as two lists."""
        for start in range(0, len(keys), _BATCH):
            some_keys, some_values = keys[start:start + _BATCH], values[start:start + _BATCH]
            self.read += len(some_keys)
            if not self._add_batch(some_keys, some_values):
                self._add_each(list(zip(some_keys, some_values)))

    def _add_batch(self, keys: Sequence[str | bytes], values: Sequence[bytes | str]) -> bool:
        """Rule 12; False (nothing done) when the batch must be decoded key by key."""
        view = self._view
        n = len(keys)
        found = view._paths(keys)
        if found is None:
            return False
        paths, spellings = found
        if not all(map(operator.lt, paths, itertools.islice(paths, 1, None))):
            order = sorted(range(n), key=paths.__getitem__)
            paths = [paths[i] for i in order]
            if not all(map(operator.lt, paths, itertools.islice(paths, 1, None))):
                return False  # one path twice (two spellings, or one key twice): key by key
            keys = [keys[i] for i in order]  # type: ignore[assignment]
            values = [values[i] for i in order]  # type: ignore[assignment]
            if spellings is not None:
                spellings = [spellings[i] for i in order]
        table = self._table
        hosts, rests = _fast_values(values)
        rest_sid: dict[str | None, int | None] = {None: None}
        for rest in set(rests):
            if rest is not None:
                shape = _rest_shape(rest)
                rest_sid[rest] = None if shape is None else table._sid(shape)
        sids = list(map(rest_sid.__getitem__, rests))
        if self.bad:  # a key of this batch that an earlier page had bad (the same key twice)
            for key in self.bad.keys() & set(map(_text, keys)):
                del self.bad[key]
        bad: list[int] = []
        for i in itertools.compress(range(n), map(operator.is_, sids, itertools.repeat(None))):
            key = _text(keys[i])
            try:
                host, shape = _decode(values[i], key)
            except msg.RecordError as exc:
                self.bad[key] = str(exc)
                logger.debug("skipping bad record at %s: %s", key, exc)
                bad.append(i)
                continue
            hosts[i] = host
            sids[i] = table._sid(shape)
        if bad:
            drop = set(bad)
            keep = [i not in drop for i in range(n)]
            paths = list(itertools.compress(paths, keep))
            hosts = list(itertools.compress(hosts, keep))
            sids = list(itertools.compress(sids, keep))
            if spellings is not None:
                spellings = list(itertools.compress(spellings, keep))
        tail = self._tail
        if tail is not None:
            self._tail = None
            if paths and paths[0] > tail[0][-1]:  # continue the held-back block
                paths = tail[0] + paths
                hosts = tail[1] + hosts
                sids = tail[2] + sids  # type: ignore[operator]
                if spellings is not None or tail[3] is not None:
                    spellings = ((tail[3] or [None] * len(tail[0]))
                                 + (spellings or [None] * (len(paths) - len(tail[0]))))
            else:
                table.append_sorted(*tail, reuse=self._reuse)
        if self._reuse is None:
            old = view._t
            self._reuse = {keys: (first, keys, hosts) for first, keys, hosts in zip(old.first, old.keys, old.hosts)}
        held = table.append_sorted(paths, hosts, sids, spellings, reuse=self._reuse,  # type: ignore[arg-type]
                                   hold=True)
        if held < len(paths):
            self._tail = (paths[held:], hosts[held:], sids[held:],  # type: ignore[assignment]
                          spellings[held:] if spellings is not None else None)
        return True

    def _flush(self) -> None:
        """Add the held-back entries (before a key-by-key batch, and at the end)."""
        if self._tail is not None:
            tail, self._tail = self._tail, None
            self._table.append_sorted(*tail, reuse=self._reuse)

    def finish(self) -> _Table:
        """The snapshot's table, complete (Store.finish_replace)."""
        self._flush()
        table = self._table
        table.keep_unused = False
        table._drop_unused(range(len(table.shape_list)))
        self._reuse = None
        return self._table

    def _add_each(self, batch: list[tuple[str | bytes, bytes | str]]) -> None:
        self._flush()
        view = self._view
        entries: list[tuple[str, str, Shape, str | None]] = []
        for key, value in batch:
            key = _text(key)
            path, spelling, error = view._path(key)
            if path is None:
                self.bad[key] = error
                logger.debug("skipping key %s: %s", key, error)
                continue
            try:
                host, shape = _decode(value, key)
            except msg.RecordError as exc:
                self.bad[key] = str(exc)
                logger.debug("skipping bad record at %s: %s", key, exc)
                continue
            if key in self.bad:  # the same key twice in one snapshot
                del self.bad[key]
            entries.append((path, host, shape, spelling))
        entries.sort(key=operator.itemgetter(0))  # stable: of two spellings the later wins
        self._table.extend(entries)


def _drop_path_and_above(kept: dict, segments: tuple[str, ...]) -> None:
    """Forget what ``kept`` holds for the path of segments and every path above it (rule 14)."""
    kept.pop("", None)
    path = ""
    for seg in segments:
        path = path + _SEP + seg if path else seg
        kept.pop(path, None)


def _fast_values(values: tuple | list) -> tuple[list[str], list[str | None]]:
    """(hosts, rests) of a batch's values in kube2sky's form; rest None (host "") for a value
    that is not (rule 12).

    The batch is one text, a value per line. When every line starts with ``{"host":"`` the
    lines are cut at their first ``"`` after it (C string methods, no regular expression per
    value): the hosts are checked together (their characters deleted at once, one length
    check, _bad_host_names) and each distinct rest once (_FAST_REST), as _FAST_ONE checks one
    value.
    """
    n = len(values)
    try:
        text = _NL.join(values) if type(values[0]) is str else b"\n".join(values).decode()
    except (TypeError, UnicodeError):
        text = None
    if (text is not None and text.count(_NL) == n - 1 and text.startswith(_FAST_HEAD)
            and text.count(_NL_HEAD) == n - 1):
        parts = list(map(str.partition, text[len(_FAST_HEAD):].split(_NL_HEAD), itertools.repeat('"')))
        hosts = list(map(_FIRST, parts))
        host_text = _NL.join(hosts)
        lengths = list(map(len, hosts))
        longest = max(lengths)
        # Only _HOST_BYTES and a newline between two hosts (none empty): deleting the host
        # characters leaves the newlines alone.
        if (longest <= _HOST_MAX and min(lengths) and host_text.isascii()
                and host_text.encode().translate(None, _HOST_BYTES) == _NL_BYTES * (n - 1)
                and not _bad_host_names(host_text, longest)):
            rests: list[str | None] = list(map(_THIRD, parts))
            odd = {rest for rest in set(rests) if _FAST_REST.fullmatch(rest) is None}  # type: ignore[arg-type]
            if odd:  # no closing quote, or not integer fields after it: not the fast form
                for i in itertools.compress(range(n), map(odd.__contains__, rests)):
                    hosts[i] = ""
                    rests[i] = None
            return hosts, rests
    return _values_one_by_one(values)


def _values_one_by_one(values: tuple | list) -> tuple[list[str], list[str | None]]:
    """:func:`_fast_values` the plain way, _FAST_ONE over each value: what a batch not all in
    kube2sky's form goes through, and the reference its batched path is tested against."""
    hosts: list[str] = []
    rests: list[str | None] = []
    for value in values:
        match = None
        try:
            match = _FAST_ONE.fullmatch(value.decode() if type(value) is bytes else value)
        except (TypeError, UnicodeError):
            pass
        if match is None or _bad_host_names(match.group(1)):
            hosts.append("")
            rests.append(None)
        else:
            hosts.append(match.group(1))
            rests.append(match.group(2))
    return hosts, rests


def _bad_host_names(text: str, longest: int | None = None) -> bool:
    """Whether any of the newline-separated strings of letters, digits, ``_*.-`` (1-253 of
    them) breaks msg's host name rule: an empty or over-long label (the name may end in a dot).
    ``longest``: the length of the longest string, when the caller knows it."""
    if text[:1] == "." or ".." in text or "\n." in text:
        return True
    if longest is None:
        longest = max(map(len, text.split(_NL))) if len(text) > 63 else len(text)
    return longest > 63 and _LONG_LABEL.search(text) is not None


def _rest_shape(rest: str) -> Shape | None:
    """The shape of ``{"host":"<a valid host>"`` + rest, by msg.decode; None when it refuses."""
    try:
        record = msg.decode('{"host":""' + rest)
    except Exception:  # noqa: BLE001 - the value goes through _decode, which reports it
        return None
    return tuple(getattr(record, name) for name in _SHAPE_FIELDS)


class Store:
    """In-memory mirror of ``/<prefix>/`` in etcd with SkyDNS lookup semantics."""

    def __init__(self, prefix: str = msg.DEFAULT_PREFIX) -> None:
        self.prefix = prefix.strip("/")
        self._head = "/" + self.prefix + "/"
        self.revision = 0
        self.generation = 0
        self.loaded = False
        self.bad: dict[str, str] = {}
        self.on_change: list[Hook] = []
        self._t = _Table()
        # rule 14: find() results of plain paths, path -> {(exact, limit): records}
        self._found: dict[str, dict[tuple[bool, int | None], list[msg.Service]]] = {}
        self._found_used: set[str] = set()  # paths whose kept finds were read since their last patch
        self._found_records = 0
        self._exists: dict[str, bool] = {}  # rule 14: exists_path() of plain paths

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

    def replace(self, items: Iterable[tuple[str | bytes, bytes | str]], revision: int) -> None:
        """Load a full snapshot (the result of a prefix range read at ``revision``)."""
        load = self.begin_replace()
        it = iter(items)
        while batch := list(itertools.islice(it, _BATCH)):
            load.add(batch)
        self.finish_replace(load, revision)

    def begin_replace(self) -> Load:
        """Start a snapshot to be filled page by page with ``Load.add`` (rule 10)."""
        return Load(self)

    def finish_replace(self, load: Load, revision: int) -> None:
        """Swap the snapshot in: the view now answers from it alone."""
        self._t = load.finish()
        self.bad = load.bad
        self.revision = revision
        self.generation += 1
        self.loaded = True
        logger.info("store loaded %d records at revision %d (%d bad)", len(self), revision, len(self.bad))
        self._changed(None)

    def put(self, key: str | bytes, value: bytes | str, revision: int) -> bool:
        """Apply one etcd put; False when the value is not a valid record (in ``bad``, logged at
        debug level: the etcd mirror reports bad values)."""
        key = _text(key)
        path, spelling, error = self._path(key)
        ok = False
        if path is None:
            self.bad[key] = error
            logger.debug("skipping key %s: %s", key, error)
        else:
            try:
                host, shape = _decode(value, key)
            except msg.RecordError as exc:
                self._remove(key, path)
                self.bad[key] = str(exc)
                logger.debug("skipping bad record at %s: %s", key, exc)
            else:
                self.bad.pop(key, None)
                table = self._t
                # rule 14: a new value for a stored path of a plain table without groups
                # changes no kept find's records but this one (see _changed); with at most
                # one grouped record before and none after, no group rule filtered anything
                same = (bool(self._found) and spelling is None and not table.spelling and not table.odd
                        and table.get(path) is not None)
                table.put(path, host, shape, spelling)
                ok = True
                if same and not table.odd and table.grouped == 0:
                    self.revision = max(self.revision, revision)
                    self.generation += 1
                    self._changed(tuple(path.split(_SEP)), _service(host, shape, key))
                    return ok
        self.revision = max(self.revision, revision)
        self.generation += 1
        if path is not None:
            self._changed(tuple(path.split(_SEP)))
        return ok

    def delete(self, key: str | bytes, revision: int) -> None:
        """Apply one etcd delete (unknown keys are fine)."""
        key = _text(key)
        self.bad.pop(key, None)
        path = self._path(key)[0]
        if path is not None:
            self._remove(key, path)
        self.revision = max(self.revision, revision)
        self.generation += 1
        if path is not None:
            self._changed(tuple(path.split(_SEP)))

    def _remove(self, key: str, path: str) -> None:
        # Only this spelling's record: the path may answer for another one (rule 1).
        if self._t.get(path) is not None and self._t.key_of(path, self._head) == key:
            self._t.remove(path)

    def _changed(self, segments: tuple[str, ...] | None, record: msg.Service | None = None) -> None:
        """Tell the hooks; drop the kept finds the change can alter (rule 14), or, for a new
        ``record`` at a stored path (nothing else changed), put it in their place."""
        found = self._found
        exists = self._exists
        if exists and record is None:
            # rule 14: whether anything is at or below the key's path and every path above it
            if segments is None:
                exists.clear()
            else:
                _drop_path_and_above(exists, segments)
        if found:
            # rule 14: what find() returned for the key's path and every path above it
            if segments is None:
                found.clear()
                self._found_used.clear()
                self._found_records = 0
            elif record is not None:
                # patched where read since the last change, else dropped: a name nobody asks
                # for costs one patch, not one per change
                key = record.key
                used = self._found_used
                path = ""
                for depth in range(len(segments) + 1):
                    if depth:
                        path = path + _SEP + segments[depth - 1] if depth > 1 else segments[0]
                    kept = found.get(path)
                    if not kept:
                        continue
                    if path not in used:
                        del found[path]
                        continue
                    used.discard(path)
                    for records in kept.values():
                        keys = list(map(_KEY_OF, records))
                        if key in keys:
                            records[keys.index(key)] = record
            else:
                _drop_path_and_above(found, segments)
        for hook in self.on_change:
            try:
                hook(segments)
            except Exception:  # noqa: BLE001 - rule 11
                logger.exception("store: on_change hook %r failed", hook)

    def _path(self, key: str) -> tuple[str | None, str | None, str]:
        """(table path, spelling, "") of a key, or (None, None, why it cannot be stored).

        The spelling is the key itself when the path does not give it back (mixed case,
        extra slashes), else None.
        """
        head = self._head
        if not key.startswith(head):
            return None, None, f"key is not under {head}"
        rest = key[len(head):]
        if _SEP in rest or _NL in rest:
            return None, None, "key has a NUL or newline character"
        low = rest.lower()
        if "//" in low or low[:1] == "/" or low[-1:] == "/" or not low:
            parts = [seg for seg in low.split("/") if seg]
            if not parts:
                return None, None, f"key is not under {head}"
            return _SEP.join(parts), key, ""
        return low.replace("/", _SEP), (None if low == rest else key), ""

    def _paths(self, keys: tuple | list) -> tuple[list[str], list[str | None] | None] | None:
        """(paths, spellings or None) of a batch of keys as _path gives them one by one, or
        None when the batch is not all plain ASCII keys under the prefix (rule 12)."""
        n = len(keys)
        try:
            text = _NL.join(keys) if type(keys[0]) is str else b"\n".join(keys).decode("ascii")
        except (TypeError, UnicodeError):
            return None
        if not text.isascii() or text.count(_NL) != n - 1 or _SEP in text:
            return None
        text = _NL + text
        if text.count(_NL + self._head) != n:  # every line starts with the head
            return None
        low = text.lower()
        # The lines with "/" as NUL: an empty segment (two slashes, a slash after the head or at
        # the end, nothing after the head) is a NUL before a NUL or a newline, or the last NUL.
        joined = low.replace("/", _SEP)
        if "\0\0" in joined or "\0\n" in joined or joined[-1] == _SEP:
            return None
        spellings: list[str | None] | None = None
        if low != text:  # a key spelled in capitals (or a prefix that is): compare what follows the head
            raw = text[1:].split(_NL)
            skip = len(self._head)
            spellings = [None if low_key[skip:] == key[skip:] else key
                         for low_key, key in zip(low[1:].split(_NL), raw)]
            if not any(spellings):
                spellings = None
        lead = (_NL + self._head).lower().replace("/", _SEP)
        return joined[len(lead):].split(lead), spellings

    # -- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._t.count

    def records(self) -> dict[str, msg.Service]:
        """A copy of every good record by etcd key."""
        return dict(self._t.items(self._head))

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

        ``limit`` caps the number of records returned (the first ones in key order).
        """
        table = self._t
        plain = _plain(segments)
        if plain is not None:
            kept = self._found.get(plain)
            if kept is not None:
                got = kept.get((exact, limit))
                if got is not None:
                    self._found_used.add(plain)
                    return list(got)
        # With no grouped records, stopping early cannot change which records survive.
        stop = limit if (limit is not None and table.grouped == 0) else None
        found: list[msg.Service] = []
        if plain is not None:
            paths: Iterable[str] = (plain,)
        elif _WILDCARDS.isdisjoint(segments):
            return []  # a segment holds a character no key can hold
        else:
            paths = self._matches(segments)
        for path in paths:
            if exact:
                where = table.get(path)
                if where is not None:
                    found.append(table.record(where[0], where[1], path, self._head))
            else:
                table.collect(path, found, stop, self._head)
            if stop is not None and len(found) >= stop:
                break
        if table.grouped and len(found) > 1:
            found = _group(found)
        if limit is not None and len(found) > limit:
            del found[limit:]
        if plain is not None:
            if self._found_records + len(found) > _FOUND:
                self._found.clear()
                self._found_used.clear()
                self._found_records = 0
            self._found.setdefault(plain, {})[(exact, limit)] = list(found)
            self._found_used.add(plain)
            self._found_records += len(found) + 1
        return found

    def children(self, segments: tuple[str, ...]) -> list[str]:
        """The labels directly below a path (no wildcards), in key order, ``_`` ones included."""
        if any(_SEP in seg or _NL in seg for seg in segments):
            return []
        path = _SEP.join(segments)
        start = len(path) + 1 if path else 0
        return [child[start:] for child in self._t.children(path, hidden=True)]

    def exists_path(self, segments: tuple[str, ...]) -> bool:
        """exists() by path segments; with wildcards, any matching name counts."""
        path = _plain(segments)
        if path is not None:
            got = self._exists.get(path)
            if got is None:
                if len(self._exists) >= _FOUND:
                    self._exists.clear()
                got = self._exists[path] = self._t.exists(path)
            return got
        for _ in self._matches(segments, check=True):
            return True
        return False

    def _matches(self, segments: tuple[str, ...], check: bool = False) -> list[str]:
        """The paths of the names a (possibly wildcard) path denotes (only existing ones with
        a wildcard or ``check``; a plain path is returned as it is otherwise)."""
        for i, seg in enumerate(segments):
            if seg in _WILDCARDS:
                return self._wild(segments, i)
            if _SEP in seg or _NL in seg:
                return []
        path = _SEP.join(segments)
        if check and not self._t.exists(path):
            return []
        return [path]

    def _wild(self, segments: tuple[str, ...], first: int) -> list[str]:
        table = self._t
        base = segments[:first]
        if any(_SEP in seg or _NL in seg for seg in segments):
            return []
        path = _SEP.join(base)
        if not table.exists(path):
            return []
        level = [path]
        for seg in segments[first:]:
            nxt: list[str] = []
            if seg in _WILDCARDS:
                for path in level:
                    nxt.extend(table.children(path))
            else:
                for path in level:
                    child = path + _SEP + seg if path else seg
                    if table.exists(child):
                        nxt.append(child)
            if not nxt:
                return []
            level = nxt
        return level


@functools.lru_cache(maxsize=1 << 12)
def _plain(segments: tuple[str, ...]) -> str | None:
    """The table path of segments without a wildcard, None when there is a wildcard or a
    segment holds a character no key can hold (NUL, newline)."""
    if not _WILDCARDS.isdisjoint(segments):
        return None
    path = _SEP.join(segments)
    if _NL in path or (segments and path.count(_SEP) != len(segments) - 1):
        return None
    return path


def _text(key: str | bytes) -> str:
    """etcd clients hand out bytes keys; the store works on text."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else key


def _group(records: list[msg.Service]) -> list[msg.Service]:
    """SkyDNS msg.Group: the shallowest records' group filters the rest (rule 5)."""
    depths = [r.key.count("/") for r in records]
    top = min(depths)
    groups = {r.group for r, d in zip(records, depths) if d == top and r.group}
    if len(groups) != 1:
        return records
    (group,) = groups
    return [r for r in records if not r.group or r.group == group]
