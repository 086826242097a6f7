"""Kubernetes objects -> SkyDNS records (etcd key -> msg.Service): DESIGN.md section 3.

Rules of this module:

1. PURE and total: no I/O, no clock; never raises on any object ``objects`` produced. What
   cannot be published is skipped and reported in ``Result.problems`` (one line naming the
   object and why); the rest of the object is still published.
2. Keys are ``msg.name_to_key`` / ``msg.ip_to_reverse_key`` of the names (built from the
   zone's key and the validated labels below it, which is the same); every leaf label is
   ``msg.leaf_label`` of a record's JSON (kube2sky's FNV-1a scheme), so the same input always
   gives the same keys and rewriting a record is a no-op. The one kube2sky exception is kept
   for compatibility: a ClusterIP service's SRV leaves are named after the hash of its first
   A/AAAA record (REFERENCE 3.2 worked example ``.../myservice/_tcp/_http/5f106532``).
3. Every host record carries the settings' priority, weight and ttl (kube2sky: 10, 10, 30);
   the ``dns-version`` TXT record carries only ``text`` and ``ttl``.
4. Cheap to build at scale (10,000 services + 100,000 endpoints are rebuilt in full by every
   sync): a record's JSON is the ``msg.encode`` form written from a template made once per
   settings by ``msg.encode`` itself (``_Template``; hosts are IP addresses or validated names,
   which JSON never escapes, anything else goes through ``msg.encode``), and the leaf labels
   of one build are hashed together by :func:`leaf_labels` (FNV-1a over many values at once
   with Python's big integers, equal to ``msg.leaf_label`` value by value; about 10x faster
   than byte by byte). An endpoint name's key is its service key plus one segment.
5. A change of endpoints only costs the changed endpoints: :func:`headless_delta` builds the
   records of the endpoints that went and came (never the whole service) when no unchanged
   endpoint can share a key with them, and gives up (None: build both sides) otherwise. It
   equals the difference of two full builds (a seeded random test compares them).

Names, for S = ``<svc>.<ns>.svc.<zone>.`` and L = ``<svc>.<ns>.<zone>.`` (legacy):

- ClusterIP/NodePort/LoadBalancer: one A/AAAA leaf per ClusterIP (dual stack) at S;
  SRV ``_<port>._<proto>.S`` per named port, host S, port = service port; PTR per ClusterIP,
  host S; the alias at L.
- Headless (clusterIP None): for every ready address (every address when the service
  publishes not-ready addresses or has the tolerate-unready annotation) of every slice of
  the service (IPv4, IPv6 and converted Endpoints merged; duplicates collapse because equal
  records have equal keys): an A/AAAA leaf at E = ``<ep>.S`` where ``<ep>`` is the
  endpoint's hostname when it is a valid DNS label, else the dashed IP (10-1-2-3,
  fd00--1); SRV ``_<port>._<proto>.S`` per endpoint name x named port of its slice, host E,
  port = endpoint port; PTR per address, host E; the alias at L. No ready address -> no
  keys at all (NXDOMAIN).
- ExternalName: a CNAME record ``{"host":"<extname>."}`` at S and at L (the legacy name
  answers what S answers). No SRV, no PTR. An IP address or a malformed name in
  ``externalName`` is skipped and reported.
- The legacy name L is ONE alias record per service, ``{"host":"S",...}`` (skydns answers
  ``L CNAME S`` plus S's addresses), never a copy of S's addresses: a headless service's
  legacy name costs one key, not one per endpoint. Written only with ``legacy_names``, only
  when S has records, and never for the namespaces in ``settings.RESERVED_LEGACY_NAMESPACES``
  (their legacy names would fall into the svc/pod subtrees, ``ns.dns`` or ``dns-version``).
  L never gets SRV records or endpoint names.

Keys per object (legacy names on; P = named ports; README "What kube2sky writes"):
ClusterIP service with k ClusterIPs: 2k + P + 1 (A and PTR per IP, SRV per port, the alias);
headless service with n ready addresses: n x (2 + P) + 1 (A, PTR and P SRV per address, the
alias when n > 0); ExternalName: 2; per cluster 1 (``dns-version``) + the DNS service's
ClusterIPs (``ns.dns``).
- Cluster records: TXT ``dns-version.<zone>`` (schema version), A/AAAA ``ns.dns.<zone>`` from
  the DNS service's ClusterIPs (whatever the namespace filter says).
- Pods (``--pods verified``): A/AAAA ``<dashed-ip>.<ns>.pod.<zone>`` per IP of every pod not
  Succeeded/Failed. No PTR for pods.
- The namespace filter (``settings.namespaces``) drops services, slices and pods of other
  namespaces silently.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import itertools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from kube2sky import objects
from kube2sky import settings as settings_mod
from skydns import msg

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME_LABEL = re.compile(r"^[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?$")
_DONE_PHASES = frozenset({"Succeeded", "Failed"})

# Entries of each memo cache below: enough for every record of a big headless service, so
# recomputing it after one endpoint change encodes and hashes only what changed; bounded so a
# large cluster's initial sync (all values distinct) costs a few MB at most.
_CACHE_SIZE = 1 << 13

# msg.encode and msg.leaf_label, memoised: equal records give equal JSON, equal JSON the same
# FNV label (msg.Service is a frozen dataclass, hashable; ``key`` is not part of its hash).
# Record fields here are str/int/bool only (never 30.0 for 30), so equal means equal JSON.
_encode = functools.lru_cache(maxsize=_CACHE_SIZE)(msg.encode)
_leaf_label = functools.lru_cache(maxsize=_CACHE_SIZE)(msg.leaf_label)

# ---- FNV-1a 32 over many values at once (msg.leaf_label, batched) ----------------------------

_FNV_PRIME = 0x01000193
_FNV_BASIS_LANE = (0x811C9DC5).to_bytes(4, "little") + bytes(4)
_LANE_MASK = b"\xff\xff\xff\xff" + bytes(4)
_BATCH = 1024
# Below this many values one object's labels are hashed one by one (memoised): a batch costs
# a Python step per byte of each distinct length, which only pays with many values per length.
_MIN_BATCH = 32
_hex = "{:x}".format


def leaf_labels(values: Sequence[str]) -> list[str]:
    """``[msg.leaf_label(v) for v in values]``, computed many values at a time.

    Values of equal length are hashed together: each is a 64-bit lane of one big integer
    holding its 32-bit FNV state (the prime is 25 bits, so a lane never carries into the next);
    one XOR with the lanes' next bytes, one multiplication and one mask advance every lane
    by one byte.
    """
    encoded = list(map(str.encode, values))
    lengths = list(map(len, encoded))
    order = sorted(range(len(encoded)), key=lengths.__getitem__)
    out = [""] * len(encoded)
    for length, group in itertools.groupby(order, key=lengths.__getitem__):
        members = list(group)
        for start in range(0, len(members), _BATCH):
            idx = members[start:start + _BATCH]
            n = len(idx)
            blob = b"".join(map(encoded.__getitem__, idx))
            lanes = bytearray(8 * n)
            mask = int.from_bytes(_LANE_MASK * n, "little")
            h = int.from_bytes(_FNV_BASIS_LANE * n, "little")
            for j in range(length):
                lanes[0::8] = blob[j::length]
                h = ((h ^ int.from_bytes(lanes, "little")) * _FNV_PRIME) & mask
            for i, label in zip(idx, map(_hex, memoryview(h.to_bytes(8 * n, "little")).cast("Q"))):
                out[i] = label
    return out


# Leaf labels of one object's recent builds (value -> label), at most _CACHE_SIZE: a change
# of a big headless service builds the records last written and the new ones, which share
# all but a few values; the second build hashes only those (hashing is 2/3 of a build).
_LABELS: dict[str, str] = {}


def _remembered_labels(values: list[str]) -> list[str]:
    """``leaf_labels(values)``, hashing only the values not in _LABELS (which it fills)."""
    memo = _LABELS
    unique = dict.fromkeys(values)
    missing = [v for v in unique if v not in memo]
    if missing:
        if len(unique) > _CACHE_SIZE:
            return leaf_labels(values)
        if len(memo) + len(missing) > _CACHE_SIZE:
            memo.clear()
            missing = list(unique)
        memo.update(zip(missing, leaf_labels(missing)))
    return [memo[v] for v in values]


_PLAIN_HOST = re.compile(r"^[a-z0-9_.:-]+$")


@dataclasses.dataclass(frozen=True, slots=True)
class _Template:
    """``msg.encode`` of a kube2sky host record, as string pieces made by ``msg.encode``."""

    tail: str  # ',"priority":10,"weight":10,"ttl":30}' (zero fields omitted, as msg.encode does)
    priority: int
    weight: int
    ttl: int
    plain: bool  # the zone's characters never need JSON escaping

    def value(self, host: str, port: int = 0) -> str:
        """The JSON of a record; ``host`` is a canonical IP or a name made of validated labels
        (JSON would never escape it): checked here only for a zone with odd characters."""
        if not self.plain or not 0 <= port <= 0xFFFF:
            return _encode(msg.Service(host=host, port=port, priority=self.priority,
                                       weight=self.weight, ttl=self.ttl))
        if port:
            return f'{{"host":"{host}","port":{port}{self.tail}'
        return f'{{"host":"{host}"{self.tail}'


@functools.lru_cache(maxsize=16)
def _template(priority: int, weight: int, ttl: int, zone: str) -> _Template:
    full = msg.encode(msg.Service(host="h", priority=priority, weight=weight, ttl=ttl))
    head = '{"host":"h"'
    assert full.startswith(head)
    return _Template(full[len(head):], priority, weight, ttl, bool(_PLAIN_HOST.match(zone)))


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """Records of one object (etcd key -> JSON value) and why parts of it were skipped;
    ``failed``: computing them raised (a bug, not bad input: kube2sky then keeps what etcd
    holds of the object, app rule 9)."""

    values: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: tuple[str, ...] = ()
    failed: bool = False

    @property
    def records(self) -> dict[str, msg.Service]:
        """The same records decoded (etcd key -> record)."""
        return {key: msg.decode(value) for key, value in self.values.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """Everything the desired record set depends on (any collections, e.g. dict.values())."""

    services: Collection[objects.Service] = ()
    # EndpointSlices and converted Endpoints; matched to services by (ns, slice.service).
    slices: Collection[objects.EndpointSlice] = ()
    pods: Collection[objects.Pod] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Desired:
    """The whole desired content of the prefix (etcd key -> JSON value) and the problems."""

    values: dict[str, str]
    problems: tuple[str, ...] = ()


# ---- names -----------------------------------------------------------------------------------

def _under(zone: str, *labels: str) -> str:
    head = ".".join(labels)
    return head + "." if zone == "." else f"{head}.{zone}"


def service_name(ns: str, name: str, settings: settings_mod.Settings) -> str:
    """``<svc>.<ns>.svc.<zone>.``"""
    return _under(settings.zone, name, ns, "svc")


def legacy_name(ns: str, name: str, settings: settings_mod.Settings) -> str | None:
    """``<svc>.<ns>.<zone>.``, or None for the reserved namespaces (whatever the flag says)."""
    if ns in settings_mod.RESERVED_LEGACY_NAMESPACES:
        return None
    return _under(settings.zone, name, ns)


def pod_name(ns: str, ip: str, settings: settings_mod.Settings) -> str:
    """``<dashed-ip>.<ns>.pod.<zone>.``"""
    return _under(settings.zone, dashed(ip), ns, "pod")


def cluster_names(settings: settings_mod.Settings) -> tuple[str, ...]:
    """The names of the cluster records: ``dns-version.<zone>.`` and ``ns.dns.<zone>.``"""
    return _under(settings.zone, "dns-version"), _under(settings.zone, "ns", "dns")


def dashed(ip: str) -> str:
    """``10.1.2.3`` -> ``10-1-2-3``; IPv6 in its compressed form, ``fd00::1`` -> ``fd00--1``."""
    return ip.replace(".", "-").replace(":", "-")


def endpoint_label(hostname: str, ip: str) -> str:
    """An endpoint's name label: its hostname when a valid DNS label, else the dashed IP."""
    host = hostname.strip().lower()
    return host if _LABEL.match(host) else dashed(ip)


def service_prefixes(ns: str, name: str, settings: settings_mod.Settings) -> tuple[str, ...]:
    """Key prefixes (ending in ``/``) holding a service's name records: S and, unless the
    namespace is reserved, L (even when legacy names are off, so turning them off cleans up).
    PTR leaves are not under them: a per-object diff also passes the keys it wrote before."""
    names = [service_name(ns, name, settings)]
    legacy = legacy_name(ns, name, settings)
    if legacy is not None:
        names.append(legacy)
    return tuple(msg.name_to_key(n, settings.prefix) + "/" for n in names)


def cluster_prefixes(settings: settings_mod.Settings) -> tuple[str, ...]:
    """Key prefixes (ending in ``/``) of the cluster records: ``dns-version`` and ``ns.dns``."""
    return tuple(msg.name_to_key(_under(settings.zone, *labels), settings.prefix) + "/"
                 for labels in (("dns-version",), ("ns", "dns")))


_IPV4 = re.compile(r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
                   r"(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$")


def _canonical_ip(text: str) -> str | None:
    if _IPV4.match(text):
        return text  # already canonical dotted quad (the common case, no ipaddress parse)
    if "%" in text:
        return None  # scoped IPv6 (fe80::1%eth0): not a cluster address
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


# ---- building --------------------------------------------------------------------------------

class _LabelOf(str):
    """A leaf given as "the label of this value" (a value of the same build, hashed with it):
    kube2sky's SRV leaves of a ClusterIP service (rule 2)."""

    __slots__ = ()


@functools.lru_cache(maxsize=16)
def _arpa4(prefix: str) -> str:
    """The head of an IPv4 address's reverse key: ``/skydns/arpa/in-addr/``."""
    return f"/{prefix.strip('/')}/arpa/in-addr/"


@functools.lru_cache(maxsize=16)
def _zone_key(zone: str, prefix: str) -> str:
    """``msg.name_to_key`` of the zone: the head of every key of a service name."""
    return msg.name_to_key(zone, prefix)


class _Builder:
    """Collects one object's records and problems; leaf labels are hashed in one batch."""

    def __init__(self, what: str, settings: settings_mod.Settings) -> None:
        self.what = what
        self.settings = settings
        self.template = _template(settings.priority, settings.weight, settings.ttl, settings.zone)
        # (key of the name, JSON value, leaf label or "" for the hash of the value)
        self.entries: list[tuple[str, str, str]] = []
        self.problems: list[str] = []
        self._keys: dict[str, str] = {}
        self._label_of = False  # some leaf is a _LabelOf

    def problem(self, why: str) -> None:
        self.problems.append(f"{self.what}: {why}")

    def value(self, host: str, port: int = 0) -> str:
        """The JSON of a host record with the settings' priority, weight and ttl."""
        return self.template.value(host, port)

    def key_of(self, name: str) -> str:
        """``msg.name_to_key`` of a name, computed once per object."""
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = msg.name_to_key(name, self.settings.prefix)
        return key

    def put(self, name: str, value: str, leaf: str = "") -> None:
        """Add a record (JSON value) under ``name``, leaf = hash of its JSON unless given."""
        self.entries.append((self.key_of(name), value, leaf))

    def name_keys(self, name: str, key: str) -> None:
        """Tell the key of a name (made of validated labels) instead of computing it."""
        self._keys[name] = key

    def put_labelled_like(self, key: str, value: str, like: str) -> None:
        """Add a record under the name whose key is ``key``, its leaf label that of the value
        ``like`` of this build."""
        self._label_of = True
        self.entries.append((key, value, _LabelOf(like)))

    def put_key(self, key: str, value: str) -> None:
        """Add a record under the name whose key is ``key``."""
        self.entries.append((key, value, ""))

    def put_ptr(self, ip: str, target: str) -> None:
        if ":" not in ip:  # canonical IPv4: msg.ip_to_reverse_key without parsing it again
            key = f"{_arpa4(self.settings.prefix)}{ip.replace('.', '/')}"
        else:
            key = msg.ip_to_reverse_key(ip, self.settings.prefix)
        self.entries.append((key, self.value(target), ""))

    def ips(self, texts: Iterable[str], where: str) -> list[str]:
        out = []
        for text in texts:
            ip = _canonical_ip(text)
            if ip is None:
                self.problem(f"{where} {text!r} is not an IP address, skipped")
            elif ip not in out:
                out.append(ip)
        return out

    def named_ports(self, ports: Iterable[objects.Port], where: str) -> list[objects.Port]:
        """Ports that get SRV records: named, valid, first of each (name, protocol)."""
        out: list[objects.Port] = []
        seen: set[tuple[str, str]] = set()
        limit = self.settings.max_ports_per_service
        for port in ports:
            if not port.name:
                continue  # the spec: unnamed ports get no SRV record
            name, proto = port.name.lower(), port.protocol.lower()
            if not _LABEL.match(name):
                self.problem(f"{where} name {port.name!r} is not a DNS label, no SRV record")
            elif not _LABEL.match(proto):
                self.problem(f"{where} {port.name!r} protocol {port.protocol!r} is not "
                             f"a DNS label, no SRV record")
            elif not 1 <= port.port <= 0xFFFF:
                self.problem(f"{where} {port.name!r} number {port.port} is not 1..65535, "
                             f"no SRV record")
            elif (name, proto) in seen:
                self.problem(f"{where} {port.name!r}/{port.protocol} is listed twice, "
                             f"first one used")
            elif len(out) >= limit:
                self.problem(f"more than {limit} named ports in {where}, the rest get "
                             f"no SRV record")
                break
            else:
                seen.add((name, proto))
                out.append(objects.Port(name, proto, port.port))
        return out

    def unhashed(self) -> list[str]:
        """The values whose leaf label is their hash, in order (for :meth:`result`)."""
        return [value for _, value, leaf in self.entries if not leaf]

    def result(self, hashes: list[str] | None = None) -> Result:
        """The records; ``hashes`` are ``leaf_labels(self.unhashed())`` when already known."""
        entries = self.entries
        if hashes is None:
            todo = self.unhashed()
            hashes = _remembered_labels(todo) if len(todo) >= _MIN_BATCH else list(map(_leaf_label, todo))
        if self._label_of:
            known = dict(zip([value for _, value, leaf in entries if not leaf], hashes))
            hashes = hashes[::-1]
            labels = [(known[leaf] if type(leaf) is _LabelOf else leaf) or hashes.pop() for _, _, leaf in entries]
        else:
            hashes = hashes[::-1]
            labels = [leaf or hashes.pop() for _, _, leaf in entries]
        values = {f"{key}/{label}": value for (key, value, _), label in zip(entries, labels)}
        limit = self.settings.max_records_per_service
        if len(values) > limit:
            self.problem(f"{len(values)} records, only the first {limit} (by key) published")
            values = {k: values[k] for k in sorted(values)[:limit]}
        return Result(values, tuple(self.problems))


def _srv_name(port: objects.Port, base: str) -> str:
    return f"_{port.name}._{port.protocol}.{base}"


def build_service(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                  settings: settings_mod.Settings) -> Result:
    """The records of one service (with its slices, for headless services) and its problems.

    Slices of other services are ignored, so the caller may pass more than needed.
    Services of unpublished namespaces give no records and no problems.
    """
    return _service_builder(svc, slices, settings).result()


def build_services(items: Iterable[tuple[objects.Service, Iterable[objects.EndpointSlice]]],
                   settings: settings_mod.Settings) -> list[Result]:
    """:func:`build_service` of many services, their leaf labels hashed in one batch (the
    fast way to build a whole cluster)."""
    return [result for result, _ in build_services_labelled(items, settings)]


def build_services_labelled(items: Iterable[tuple[objects.Service, Iterable[objects.EndpointSlice]]],
                            settings: settings_mod.Settings) -> list[tuple[Result, list[str]]]:
    """:func:`build_services`, each result with the leaf labels of its hashed values, in
    order (what :func:`build_service_labelled` takes back as ``labels``)."""
    builders = [_service_builder(svc, slices, settings) for svc, slices in items]
    todo = [b.unhashed() for b in builders]
    hashes = leaf_labels([value for values in todo for value in values])
    out, start = [], 0
    for b, values in zip(builders, todo):
        mine = hashes[start:start + len(values)]
        out.append((b.result(mine), mine))
        start += len(values)
    return out


def build_service_labelled(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                           settings: settings_mod.Settings, labels: Sequence[int] | None = None,
                           memo: Mapping[str, str] | None = None) -> tuple[Result, list[str], list[str]]:
    """:func:`build_service`, its hashed values and their leaf labels (in order), so that the
    next build hashes less (rule 4): ``labels`` are the labels (as integers) of an earlier
    build of the very same inputs (used when their count matches), ``memo`` known labels of
    values (value -> label, e.g. of the build before a change). Equal to build_service."""
    b = _service_builder(svc, slices, settings)
    todo = b.unhashed()
    if labels is not None and len(labels) == len(todo):
        hashes = list(map(_hex, labels))
    elif memo:
        hashes = list(map(memo.get, todo))
        missing = [v for v, h in zip(todo, hashes) if h is None]
        if missing:
            known = dict(zip(missing, _remembered_labels(missing) if len(missing) >= _MIN_BATCH
                             else list(map(_leaf_label, missing))))
            hashes = [h if h is not None else known[v] for v, h in zip(todo, hashes)]
    else:
        hashes = _remembered_labels(todo) if len(todo) >= _MIN_BATCH else list(map(_leaf_label, todo))
    return b.result(hashes), todo, hashes


def _service_builder(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                     settings: settings_mod.Settings) -> _Builder:
    b = _Builder(f"Service {svc.ns}/{svc.name}", settings)
    if not settings.publishes(svc.ns):
        return b
    if not _LABEL.match(svc.ns) or not _LABEL.match(svc.name):
        b.problem("namespace or name is not a DNS label, no records")
        return b
    name = service_name(svc.ns, svc.name, settings)
    legacy = legacy_name(svc.ns, svc.name, settings) if settings.legacy_names else None
    zone_key = _zone_key(settings.zone, settings.prefix)  # the labels are valid: no name_to_key
    b.name_keys(name, f"{zone_key}/svc/{svc.ns}/{svc.name}")
    if legacy:
        b.name_keys(legacy, f"{zone_key}/{svc.ns}/{svc.name}")
    if svc.type == objects.EXTERNAL_NAME:
        _external_name(b, svc, name, legacy)
    elif svc.headless:
        _headless(b, svc, slices, name, legacy)
    elif svc.cluster_ips:
        _cluster_ip(b, svc, name, legacy)
    else:
        b.problem("no clusterIP (yet), no records")
    return b


def for_service(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                settings: settings_mod.Settings) -> dict[str, msg.Service]:
    """The records of one service: :func:`build_service` without the problems."""
    return build_service(svc, slices, settings).records


def _cluster_ip(b: _Builder, svc: objects.Service, name: str, legacy: str | None) -> None:
    ips = b.ips(svc.cluster_ips, "clusterIP")
    if not ips:
        return
    for ip in ips:
        b.put(name, b.value(ip))
        b.put_ptr(ip, name)
    # kube2sky's SRV leaves: the label of the first A/AAAA record
    first = b.value(ips[0])
    for key, number in _srv_keys(b, b.named_ports(svc.ports, "port"), name):
        b.put_labelled_like(key, b.value(name, number), first)
    if legacy:
        b.put(legacy, b.value(name))


def _headless(b: _Builder, svc: objects.Service, slices: Iterable[objects.EndpointSlice],
              name: str, legacy: str | None) -> None:
    base = b.key_of(name)
    for eps in sorted(slices, key=lambda s: s.name):
        if (eps.ns, eps.service) != (svc.ns, svc.name):
            continue
        if eps.address_type == "FQDN":
            b.problem(f"EndpointSlice {eps.name} has addressType FQDN, skipped")
            continue
        # (SRV key, port number) per named port, worked out once per slice / port subset
        slice_ports = _srv_keys(b, b.named_ports(eps.ports, f"EndpointSlice {eps.name} port"), name)
        subset_ports: dict[tuple[objects.Port, ...], list[tuple[str, int]]] = {}
        for ep in eps.endpoints:
            if not (ep.ready or svc.publish_not_ready):
                continue
            if ep.ports is None:
                ports = slice_ports
            elif ep.ports in subset_ports:
                ports = subset_ports[ep.ports]
            else:
                ports = subset_ports[ep.ports] = _srv_keys(b, b.named_ports(
                    ep.ports, f"Endpoints {eps.name} port"), name)
            _endpoint(b, ep, ports, name, base, f"EndpointSlice {eps.name} address")
    if legacy and b.entries:
        b.put(legacy, b.value(name))


def _endpoint(b: _Builder, ep: objects.Endpoint, ports: list[tuple[str, int]], name: str, base: str,
              where: str) -> None:
    """One endpoint's records: A/AAAA and PTR per address, SRV per (SRV key, port number)."""
    addresses = ep.addresses
    if len(addresses) == 1 and b.template.plain and _IPV4.match(addresses[0]):
        # the common case written out: one canonical IPv4 address (what ips() keeps as it
        # is), a hostname that is already a label, values as _Template.value makes them
        ip = addresses[0]
        host = ep.hostname
        label = host if _LABEL.match(host) else endpoint_label(host, ip)
        target = f"{label}.{name}"
        tail = b.template.tail
        append = b.entries.append
        append((f"{base}/{label}", f'{{"host":"{ip}"{tail}', ""))
        append((f"{_arpa4(b.settings.prefix)}{ip.replace('.', '/')}", f'{{"host":"{target}"{tail}', ""))
        for srv_key, number in ports:
            append((srv_key, f'{{"host":"{target}","port":{number}{tail}', ""))
        return
    for ip in b.ips(ep.addresses, where):
        label = endpoint_label(ep.hostname, ip)
        target = f"{label}.{name}"
        b.put_key(f"{base}/{label}", b.value(ip))
        b.put_ptr(ip, target)
        for srv_key, number in ports:
            b.put_key(srv_key, b.value(target, number))


def _split(old: list[objects.Endpoint], new: list[objects.Endpoint]
           ) -> tuple[list[objects.Endpoint], list[objects.Endpoint], list[objects.Endpoint]]:
    """(gone, came, kept) of two lists of endpoints as multisets: old = kept + gone and
    new = kept + came. The very same objects are matched first (a re-read slice reuses its
    unchanged endpoints, objects.parse_endpoint_slice), then equal ones."""
    pending: dict[int, list[objects.Endpoint]] = {}
    for ep in new:
        pending.setdefault(id(ep), []).append(ep)
    gone, kept = [], []
    for ep in old:
        same = pending.get(id(ep))
        if same:
            kept.append(same.pop())
        else:
            gone.append(ep)
    came = [ep for eps in pending.values() for ep in eps]
    if gone and came:  # equal objects that are not the same one
        left = collections.Counter(came)
        still = []
        for ep in gone:
            if left[ep] > 0:
                left[ep] -= 1
                kept.append(ep)
            else:
                still.append(ep)
        gone, came = still, list(left.elements())
    return gone, came, kept


@dataclasses.dataclass(frozen=True, slots=True)
class Delta:
    """What changes in etcd between two builds of one owner: keys to put (with their values),
    keys to delete, the change in the number of keys, and the problems of what was added."""

    puts: dict[str, str]
    deletes: tuple[str, ...]
    count: int
    problems: tuple[str, ...] = ()


def headless_delta(old: tuple[objects.Service, Sequence[objects.EndpointSlice]],
                   new: tuple[objects.Service, Sequence[objects.EndpointSlice]],
                   settings: settings_mod.Settings) -> Delta | None:
    """The difference between build_service(*old) and build_service(*new) of a headless
    service whose change is only in endpoints, built from the changed endpoints alone (rule 5);
    None when it cannot be worked out that way (then both builds are needed).

    Local when: the service is the same (equal) published headless service; the slices are
    the same ones in the same order, and a changed slice keeps its address type (not FQDN)
    and ports; no endpoint left unchanged shares an address or a name label with a changed one
    (their records could share keys); an unchanged endpoint still has an address (the legacy
    alias stays); and neither side can reach --max-records-per-service (no truncation).
    """
    svc, old_slices = old
    new_svc, new_slices = new
    if new_svc is not svc and new_svc != svc:
        return None
    if (svc.type == objects.EXTERNAL_NAME or not svc.headless or not settings.publishes(svc.ns)
            or not _LABEL.match(svc.ns) or not _LABEL.match(svc.name) or len(old_slices) != len(new_slices)):
        return None
    removed: collections.Counter = collections.Counter()
    added: collections.Counter = collections.Counter()
    changed: list[objects.EndpointSlice] = []
    # (slice, its unchanged endpoints, whether they are counted in ``bound`` already)
    unchanged: list[tuple[objects.EndpointSlice, Iterable[objects.Endpoint], bool]] = []
    bound = 1  # records, at most (the alias + every address's A, PTR and SRV records)
    for o, n in zip(old_slices, new_slices):
        if (o.ns, o.service) != (svc.ns, svc.name) or (n.ns, n.service) != (svc.ns, svc.name):
            return None
        if o is n:
            if o.address_type != "FQDN":
                unchanged.append((o, o.endpoints, False))
            continue
        if o.name != n.name or o.address_type != n.address_type or o.ports != n.ports:
            return None
        if o.address_type == "FQDN":
            continue  # contributes nothing either way
        gone, came, kept = _split([ep for ep in o.endpoints if ep.ready or svc.publish_not_ready],
                                  [ep for ep in n.endpoints if ep.ready or svc.publish_not_ready])
        removed.update((n.name, ep) for ep in gone)
        added.update((n.name, ep) for ep in came)
        unchanged.append((n, kept, True))
        changed.append(n)
        for ep in itertools.chain(o.endpoints, n.endpoints):
            bound += len(ep.addresses) * (2 + len(n.ports if ep.ports is None else ep.ports))
    if not removed and not added:
        return Delta({}, (), 0)
    # the addresses and labels of the changed endpoints; an unchanged one sharing any is a
    # possible shared key (one record from two endpoints): not local
    ips: set[str] = set()
    labels: set[str] = set()
    for _, ep in itertools.chain(removed, added):
        for text in ep.addresses:
            ip = _canonical_ip(text)
            if ip is not None:
                ips.add(ip)
                labels.add(endpoint_label(ep.hostname, ip))
    alias = False
    for eps, endpoints, counted in unchanged:
        for ep in endpoints:
            if not (ep.ready or svc.publish_not_ready):
                continue
            if not counted:
                bound += len(ep.addresses) * (2 + len(eps.ports if ep.ports is None else ep.ports))
            for text in ep.addresses:
                ip = _canonical_ip(text)
                if ip is None:
                    continue
                if ip in ips or endpoint_label(ep.hostname, ip) in labels:
                    return None
                alias = True
    if not alias or bound > settings.max_records_per_service:
        return None
    name = service_name(svc.ns, svc.name, settings)
    by_name = {eps.name: eps for eps in changed}
    sides = []
    for endpoints in (removed, added):
        b = _Builder(f"Service {svc.ns}/{svc.name}", settings)
        base = b.key_of(name)
        ports: dict[tuple, list[tuple[str, int]]] = {}
        for slice_name, ep in endpoints:
            eps = by_name[slice_name]
            where = (slice_name, ep.ports)
            if where not in ports:
                if ep.ports is None:
                    ports[where] = _srv_keys(b, b.named_ports(eps.ports, f"EndpointSlice {eps.name} port"), name)
                else:
                    ports[where] = _srv_keys(b, b.named_ports(ep.ports, f"Endpoints {eps.name} port"), name)
            _endpoint(b, ep, ports[where], name, base, f"EndpointSlice {eps.name} address")
        sides.append(b.result())
    before_values, after_values = sides[0].values, sides[1].values
    puts = {k: v for k, v in after_values.items() if before_values.get(k) != v}
    deletes = tuple(k for k in before_values if k not in after_values)
    return Delta(puts, deletes, len(after_values) - len(before_values), sides[1].problems)


def _srv_keys(b: _Builder, ports: Iterable[objects.Port], base: str) -> list[tuple[str, int]]:
    """(key, port number) of each named port's SRV name under ``base`` (ports come from
    named_ports: lower-case valid labels, so the key is the base's plus two segments)."""
    head = b.key_of(base)
    return [(f"{head}/_{port.protocol}/_{port.name}", port.port) for port in ports]


def _external_name(b: _Builder, svc: objects.Service, name: str, legacy: str | None) -> None:
    target = svc.external_name.lower().rstrip(".")
    if not target:
        b.problem("ExternalName without externalName, no records")
        return
    if _canonical_ip(target) is not None:
        b.problem(f"externalName {svc.external_name!r} is an IP address, not a name; no records")
        return
    parts = target.split(".")
    if len(target) > 253 or not all(_NAME_LABEL.match(p) for p in parts):
        b.problem(f"externalName {svc.external_name!r} is not a DNS name, no records")
        return
    target += "."
    if target in (name, legacy):
        b.problem(f"externalName {svc.external_name!r} points at the service itself, no records")
        return
    value = b.value(target)
    b.put(name, value)
    if legacy:
        b.put(legacy, value)


def build_pod(pod: objects.Pod, settings: settings_mod.Settings) -> Result:
    """The records of one pod (``--pods verified`` only) and its problems."""
    b = _Builder(f"Pod {pod.ns}/{pod.name}", settings)
    if (settings.pods != settings_mod.PodsMode.VERIFIED or not settings.publishes(pod.ns)
            or pod.phase in _DONE_PHASES):
        return b.result()
    if not _LABEL.match(pod.ns):
        b.problem("namespace is not a DNS label, no records")
        return b.result()
    for ip in b.ips(pod.ips, "podIP"):
        b.put(pod_name(pod.ns, ip, settings), b.value(ip))
    return b.result()


def for_pod(pod: objects.Pod, settings: settings_mod.Settings) -> dict[str, msg.Service]:
    """The records of one pod: :func:`build_pod` without the problems."""
    return build_pod(pod, settings).records


def build_cluster(dns_service: objects.Service | None, settings: settings_mod.Settings) -> Result:
    """``dns-version.<zone>`` TXT and ``ns.dns.<zone>`` A/AAAA (from the DNS service)."""
    b = _Builder("cluster", settings)
    version, ns_dns = cluster_names(settings)
    b.put(version, _encode(msg.Service(text=settings.schema_version, ttl=settings.ttl)))
    if dns_service is not None:
        if dns_service.headless or dns_service.type == objects.EXTERNAL_NAME:
            b.problem(f"DNS service {dns_service.ns}/{dns_service.name} has no ClusterIP, "
                      f"no ns.dns records")
        for ip in b.ips(() if dns_service.headless else dns_service.cluster_ips,
                        "DNS service clusterIP"):
            b.put(ns_dns, b.value(ip))
    return b.result()


def for_cluster(dns_service: objects.Service | None,
                settings: settings_mod.Settings) -> dict[str, msg.Service]:
    """The cluster records: :func:`build_cluster` without the problems."""
    return build_cluster(dns_service, settings).records


def encode(records: Mapping[str, msg.Service]) -> dict[str, str]:
    """etcd key -> record becomes etcd key -> JSON value (``msg.encode``)."""
    return {key: _encode(record) for key, record in records.items()}


def build(state: State, settings: settings_mod.Settings) -> Desired:
    """The whole desired content of the prefix for a cluster state, and every problem."""
    services = {svc.ref: svc for svc in state.services}
    slices: dict[tuple[str, str], list[objects.EndpointSlice]] = {}
    for eps in state.slices:
        slices.setdefault(eps.service_ref, []).append(eps)
    values: dict[str, str] = {}
    problems: list[str] = []

    def add(result: Result) -> None:
        values.update(result.values)
        problems.extend(result.problems)

    dns_ref = settings.dns_service_ref
    add(build_cluster(services.get(dns_ref) if dns_ref else None, settings))
    refs = sorted(services)
    for start in range(0, len(refs), 512):
        for result in build_services([(services[ref], slices.get(ref, ())) for ref in refs[start:start + 512]],
                                     settings):
            add(result)
    for pod in sorted(state.pods, key=lambda p: p.ref):
        add(build_pod(pod, settings))
    return Desired(values, tuple(problems))


def desired(state: State, settings: settings_mod.Settings) -> dict[str, str]:
    """etcd key -> JSON value of everything kube2sky should have written: :func:`build`
    without the problems."""
    return build(state, settings).values
