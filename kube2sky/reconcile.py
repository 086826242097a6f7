"""Desired records vs what etcd holds -> the puts and deletes that make them equal.

Rules of this module:

1. PURE: values in, values out; no I/O. Keys and values are ``str`` (the writer decodes etcd
   bytes as UTF-8 before calling).
2. Plans are sorted and idempotent: applying ``plan(d, a)`` to ``a`` gives a state whose
   plan is empty; ``plan(d, d)`` is empty.
3. Only keys kube2sky owns are ever deleted (ownership rule below). Puts overwrite whatever
   holds a desired key.
4. Never delete-then-add: :func:`chunk` puts every put of an object in the same or an earlier
   transaction than its deletes, and objects with puts before objects with only deletes.

Ownership rule (what kube2sky may delete). An etcd key is kube2sky's when both hold:

a. It lies under ``/<prefix>/<zone reversed>/`` (the cluster zone: svc and pod subtrees,
   legacy ``<svc>.<ns>.<zone>`` names, ``dns-version``, ``ns.dns``) or under
   ``/<prefix>/arpa/`` (PTR leaves). Records of other zones are never touched, so several
   clusters may share an etcd prefix as long as their PTR leaves do not meet.
b. Its last segment is self-certifying: it equals ``msg.leaf_label(value)``, the FNV-1a
   hash of the value JSON, which is how every kube2sky leaf is named. The one exception
   is the kube2sky-compatible SRV leaf of a ClusterIP service
   (``.../<svc>/_<proto>/_<port>/<hash of the A record>``), recognised by its shape: a hex
   leaf of at most 8 characters under two ``_`` labels, a value that decodes with a port
   and whose host is exactly the name above the ``_`` labels.

The rule is total: a value that does not decode (bad JSON, ``1e400``, ``NaN``, a wrong type)
fails (b) unless its leaf is its own hash, so it is left alone as not kube2sky's (or
overwritten when kube2sky wants that key); reading it never raises.

Operators' records written with etcdctl (``/skydns/local/cluster/registry``,
``.../svc/default/web/extra``, ``.../custom/x1``) fail (b) and stay, even inside the
``svc`` subtree. The only way to lose one is to name its leaf with the FNV hash of its own
value (for example by copying a kube2sky key verbatim); the README says so. Records of the
Go kube2sky (hostname-named headless leaves) are not recognised either and must be removed
once by hand after an upgrade.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

from kube2sky import settings as settings_mod
from skydns import msg

_HEX_LEAF = re.compile(r"^[0-9a-f]{1,8}$")


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """Puts (key, JSON value) and deletes (key), each sorted by key."""

    puts: tuple[tuple[str, str], ...] = ()
    deletes: tuple[str, ...] = ()

    def __len__(self) -> int:
        """Number of etcd operations."""
        return len(self.puts) + len(self.deletes)

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


@dataclasses.dataclass(frozen=True, slots=True)
class Ownership:
    """The ownership rule (module docstring) as a predicate ``owned(key, value)``.

    ``zones`` empty means any key under the prefix passes part (a).
    """

    prefix: str = msg.DEFAULT_PREFIX
    zones: tuple[str, ...] = ()
    _zone_segs: tuple[tuple[str, ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone_segs",
                           tuple(tuple(reversed(msg.labels(zone))) for zone in self.zones))

    def __call__(self, key: str, value: str) -> bool:
        try:
            segs = msg.key_segments(key, self.prefix)
        except Exception:  # noqa: BLE001 - PathError, or any odd key: not ours
            return False
        if len(segs) < 2:
            return False
        if self.zones and segs[0] != "arpa" and not any(
                segs[:len(zone)] == zone and len(segs) > len(zone) for zone in self._zone_segs):
            return False
        leaf = segs[-1]
        if leaf == msg.leaf_label(value):
            return True
        return _is_cluster_ip_srv(segs, value, self.prefix)


def _is_cluster_ip_srv(segs: tuple[str, ...], value: str, prefix: str) -> bool:
    if len(segs) < 4 or not _HEX_LEAF.match(segs[-1]):
        return False
    if not (segs[-3].startswith("_") and segs[-2].startswith("_")):
        return False
    try:
        record = msg.decode(value)
        base = msg.key_to_name("/" + "/".join([prefix.strip("/"), *segs[:-3]]), prefix)
        return record.port > 0 and msg.normalize(record.host) == base
    except Exception:  # noqa: BLE001 - any bad value (1e400, NaN, garbage) is simply not ours
        return False


def unreadable(value: str) -> str | None:
    """Why a value is not a record kube2sky could have written (``msg.decode`` fails, with
    any exception), or None when it decodes. Total: never raises."""
    try:
        msg.decode(value)
    except msg.RecordError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - OverflowError on 1e400, RecursionError, ...
        return f"{type(err).__name__}: {err}"
    return None


def ownership(settings: settings_mod.Settings) -> Ownership:
    """The ownership predicate for a kube2sky configuration (its prefix and zone)."""
    return Ownership(settings.prefix, (settings.zone,))


Owned = Callable[[str, str], bool]


def plan(desired: Mapping[str, str], actual: Mapping[str, str],
         prefix: str = msg.DEFAULT_PREFIX, owned: Owned | None = None) -> Plan:
    """What to write so that etcd holds ``desired`` and none of kube2sky's other keys.

    Args:
        desired: every key kube2sky should have, with its JSON value.
        actual: what the prefix holds now (keys outside the prefix are ignored).
        prefix: the etcd key prefix, without slashes.
        owned: the ownership predicate; default ``Ownership(prefix)`` (any zone).
    """
    owned = owned or Ownership(prefix)
    puts = tuple(sorted((k, v) for k, v in desired.items() if actual.get(k) != v))
    deletes = tuple(sorted(k for k, v in actual.items() if k not in desired and owned(k, v)))
    return Plan(puts, deletes)


def _in_scope(key: str, prefixes: Iterable[str]) -> bool:
    for p in prefixes:
        if p.endswith("/"):
            if key.startswith(p):
                return True
        elif key == p or key.startswith(p + "/"):
            return True
    return False


def changes_for(key_prefixes: Iterable[str], desired: Mapping[str, str],
                actual: Mapping[str, str], prefix: str = msg.DEFAULT_PREFIX,
                owned: Owned | None = None) -> Plan:
    """The plan for one object: puts of its desired records, deletes of its stale ones.

    Only keys of ``actual`` in scope may be deleted: a key is in scope when it starts with
    one of ``key_prefixes`` ending in ``/`` (``records.service_prefixes``), or equals or lies
    below one without it (pass the keys the object had before, which covers its PTR leaves).

    Args:
        key_prefixes: the object's key space, as above.
        desired: the object's records now (key -> JSON value).
        actual: etcd's content, or at least everything in scope.
    """
    scopes = tuple(key_prefixes)
    owned = owned or Ownership(prefix)
    puts = tuple(sorted((k, v) for k, v in desired.items() if actual.get(k) != v))
    deletes = tuple(sorted(k for k, v in actual.items()
                           if k not in desired and _in_scope(k, scopes) and owned(k, v)))
    return Plan(puts, deletes)


def group_of(key: str, prefix: str = msg.DEFAULT_PREFIX) -> str:
    """The object a key belongs to, for batching: a service's whole ``svc`` directory, a pod
    name, one reverse address, else the record's name with ``_`` labels and the leaf cut."""
    try:
        segs = msg.key_segments(key, prefix)
    except msg.PathError:
        return key
    for marker in ("svc", "pod"):
        if marker in segs[:-1]:
            i = segs.index(marker)
            return "/".join(segs[:i + 3])
    cut = next((i for i, seg in enumerate(segs) if seg.startswith("_")), len(segs) - 1)
    return "/".join(segs[:max(cut, 1)])


def chunk(plan: Plan, max_ops: int, prefix: str = msg.DEFAULT_PREFIX,
          group: Callable[[str], str] | None = None) -> list[Plan]:
    """Split a plan into transactions of at most ``max_ops`` operations.

    Operations are grouped by object (``group``, default :func:`group_of`); a group is never
    split unless it alone exceeds ``max_ops``, then its puts come first. Groups with puts go
    before groups with only deletes. Greedy packing keeps the number of transactions low.
    """
    max_ops = max(1, max_ops)
    key_group = group or (lambda key: group_of(key, prefix))
    groups: dict[str, tuple[list[tuple[str, str]], list[str]]] = {}
    for key, value in plan.puts:
        groups.setdefault(key_group(key), ([], []))[0].append((key, value))
    for key in plan.deletes:
        groups.setdefault(key_group(key), ([], []))[1].append(key)
    order = sorted(groups, key=lambda g: (not groups[g][0], g))

    batches: list[Plan] = []
    puts: list[tuple[str, str]] = []
    deletes: list[str] = []

    def flush() -> None:
        if puts or deletes:
            batches.append(Plan(tuple(sorted(puts)), tuple(sorted(deletes))))
            puts.clear()
            deletes.clear()

    for gid in order:
        gputs, gdeletes = groups[gid]
        size = len(gputs) + len(gdeletes)
        if len(puts) + len(deletes) + size > max_ops:
            flush()
        if size <= max_ops:
            puts.extend(gputs)
            deletes.extend(gdeletes)
            continue
        ops: list[tuple[str, str] | str] = [*gputs, *gdeletes]
        for op in ops:
            if len(puts) + len(deletes) >= max_ops:
                flush()
            if isinstance(op, tuple):
                puts.append(op)
            else:
                deletes.append(op)
        flush()
    flush()
    return batches
