"""Kubernetes objects -> SkyDNS records (etcd key -> msg.Service): DESIGN.md section 3.

Rules of this module:

1. PURE and total: no I/O, no clock; never raises on any object ``objects`` produced. What
   cannot be published is skipped and reported in ``Result.problems`` (one line naming the
   object and why); the rest of the object is still published.
2. Keys come only from ``msg.name_to_key`` / ``msg.ip_to_reverse_key``; every leaf label is
   ``msg.leaf_label`` of a record's JSON (kube2sky's FNV-1a scheme), so the same input always
   gives the same keys and rewriting a record is a no-op. The one kube2sky exception is kept
   for compatibility: a ClusterIP service's SRV leaves are named after the hash of its first
   A/AAAA record (REFERENCE 3.2 worked example ``.../myservice/_tcp/_http/5f106532``).
3. Every host record carries the settings' priority, weight and ttl (kube2sky: 10, 10, 30);
   the ``dns-version`` TXT record carries only ``text`` and ``ttl``.
4. Cheap to rebuild: each distinct record is encoded once and each distinct JSON value hashed
   once (bounded memo caches, ``_encode`` and ``_leaf_label``; both are pure functions of
   their argument, so caching never changes a key or a value), and a name's etcd key is
   computed once per object (SRV and legacy names repeat for every endpoint).

Names, for S = ``<svc>.<ns>.svc.<zone>.`` and L = ``<svc>.<ns>.<zone>.`` (legacy):

- ClusterIP/NodePort/LoadBalancer: one A/AAAA leaf per ClusterIP (dual stack) at S and at L;
  SRV ``_<port>._<proto>.S`` per named port, host S, port = service port; PTR per ClusterIP,
  host S.
- Headless (clusterIP None): for every ready address (every address when the service
  publishes not-ready addresses or has the tolerate-unready annotation) of every slice of
  the service (IPv4, IPv6 and converted Endpoints merged; duplicates collapse because equal
  records have equal keys): an A/AAAA leaf at E = ``<ep>.S`` where ``<ep>`` is the
  endpoint's hostname when it is a valid DNS label, else the dashed IP (10-1-2-3,
  fd00--1); SRV ``_<port>._<proto>.S`` per endpoint name x named port of its slice, host E,
  port = endpoint port; PTR per address, host E; the same addresses flat at L. No ready
  address -> no keys at all (NXDOMAIN).
- ExternalName: a CNAME record ``{"host":"<extname>."}`` at S and at L (the legacy name
  answers what S answers). No SRV, no PTR. An IP address or a malformed name in
  ``externalName`` is skipped and reported.
- L is written only with ``legacy_names`` and never for the namespaces in
  ``settings.RESERVED_LEGACY_NAMESPACES`` (their legacy names would fall into the svc/pod
  subtrees, ``ns.dns`` or ``dns-version``). L never gets SRV records or endpoint names.
- Cluster records: TXT ``dns-version.<zone>`` (schema version), A/AAAA ``ns.dns.<zone>`` from
  the DNS service's ClusterIPs (whatever the namespace filter says).
- Pods (``--pods verified``): A/AAAA ``<dashed-ip>.<ns>.pod.<zone>`` per IP of every pod not
  Succeeded/Failed. No PTR for pods.
- The namespace filter (``settings.namespaces``) drops services, slices and pods of other
  namespaces silently.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping

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


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """Records of one object (etcd key -> record) and why parts of it were skipped."""

    records: dict[str, msg.Service]
    problems: tuple[str, ...] = ()
    # The same records encoded (etcd key -> JSON value, ``msg.encode``).
    values: dict[str, str] = dataclasses.field(default_factory=dict)


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


def _canonical_ip(text: str) -> str | None:
    if "%" in text:
        return None  # scoped IPv6 (fe80::1%eth0): not a cluster address
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


# ---- building --------------------------------------------------------------------------------

class _Builder:
    """Collects one object's records and problems."""

    def __init__(self, what: str, settings: settings_mod.Settings) -> None:
        self.what = what
        self.settings = settings
        self.records: dict[str, msg.Service] = {}
        self.values: dict[str, str] = {}
        self.problems: list[str] = []
        self._keys: dict[str, str] = {}

    def problem(self, why: str) -> None:
        self.problems.append(f"{self.what}: {why}")

    def record(self, host: str, port: int = 0) -> msg.Service:
        s = self.settings
        return msg.Service(host=host, port=port, priority=s.priority, weight=s.weight, ttl=s.ttl)

    @staticmethod
    def leaf(value: str) -> str:
        """``msg.leaf_label`` of a JSON value (memoised)."""
        return _leaf_label(value)

    def key_of(self, name: str) -> str:
        """``msg.name_to_key`` of a name, computed once per object."""
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = msg.name_to_key(name, self.settings.prefix)
        return key

    def _add(self, key: str, record: msg.Service, leaf: str) -> None:
        value = _encode(record)
        key = key + "/" + (leaf or _leaf_label(value))
        self.records[key] = record
        self.values[key] = value

    def put(self, name: str, record: msg.Service, leaf: str = "") -> None:
        """Add ``record`` under ``name``, leaf = hash of its JSON unless given."""
        self._add(self.key_of(name), record, leaf)

    def put_ptr(self, ip: str, target: str) -> None:
        self._add(msg.ip_to_reverse_key(ip, self.settings.prefix), self.record(host=target), "")

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

    def result(self) -> Result:
        limit = self.settings.max_records_per_service
        records, values = self.records, self.values
        if len(records) > limit:
            self.problem(f"{len(records)} records, only the first {limit} (by key) published")
            records = {k: records[k] for k in sorted(records)[:limit]}
            values = {k: values[k] for k in records}
        return Result(records, tuple(self.problems), values)


def _srv_name(port: objects.Port, base: str) -> str:
    return f"_{port.name}._{port.protocol}.{base}"


def _srv_ports(ports: Iterable[objects.Port], base: str) -> list[tuple[str, int]]:
    return [(_srv_name(port, base), port.port) for port in ports]


def build_service(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                  settings: settings_mod.Settings) -> Result:
    """The records of one service (with its slices, for headless services) and its problems.

    Slices of other services are ignored, so the caller may pass more than needed.
    Services of unpublished namespaces give no records and no problems.
    """
    b = _Builder(f"Service {svc.ns}/{svc.name}", settings)
    if not settings.publishes(svc.ns):
        return b.result()
    if not _LABEL.match(svc.ns) or not _LABEL.match(svc.name):
        b.problem("namespace or name is not a DNS label, no records")
        return b.result()
    name = service_name(svc.ns, svc.name, settings)
    legacy = legacy_name(svc.ns, svc.name, settings) if settings.legacy_names else None
    if svc.type == objects.EXTERNAL_NAME:
        _external_name(b, svc, name, legacy)
    elif svc.headless:
        _headless(b, svc, slices, name, legacy)
    elif svc.cluster_ips:
        _cluster_ip(b, svc, name, legacy)
    else:
        b.problem("no clusterIP (yet), no records")
    return b.result()


def for_service(svc: objects.Service, slices: Iterable[objects.EndpointSlice],
                settings: settings_mod.Settings) -> dict[str, msg.Service]:
    """The records of one service: :func:`build_service` without the problems."""
    return build_service(svc, slices, settings).records


def _cluster_ip(b: _Builder, svc: objects.Service, name: str, legacy: str | None) -> None:
    ips = b.ips(svc.cluster_ips, "clusterIP")
    if not ips:
        return
    for ip in ips:
        record = b.record(host=ip)
        b.put(name, record)
        if legacy:
            b.put(legacy, record)
        b.put_ptr(ip, name)
    # kube2sky's SRV leaves: the label of the first A/AAAA record (already encoded above)
    leaf = b.leaf(_encode(b.record(host=ips[0])))
    for port in b.named_ports(svc.ports, "port"):
        b.put(_srv_name(port, name), b.record(host=name, port=port.port), leaf=leaf)


def _headless(b: _Builder, svc: objects.Service, slices: Iterable[objects.EndpointSlice],
              name: str, legacy: str | None) -> None:
    for eps in sorted(slices, key=lambda s: s.name):
        if (eps.ns, eps.service) != (svc.ns, svc.name):
            continue
        if eps.address_type == "FQDN":
            b.problem(f"EndpointSlice {eps.name} has addressType FQDN, skipped")
            continue
        # (SRV name, port number) per named port, worked out once per slice / port subset
        slice_ports = _srv_ports(b.named_ports(eps.ports, f"EndpointSlice {eps.name} port"), name)
        subset_ports: dict[tuple[objects.Port, ...], list[tuple[str, int]]] = {}
        for ep in eps.endpoints:
            if not (ep.ready or svc.publish_not_ready):
                continue
            if ep.ports is None:
                ports = slice_ports
            elif ep.ports in subset_ports:
                ports = subset_ports[ep.ports]
            else:
                ports = subset_ports[ep.ports] = _srv_ports(b.named_ports(
                    ep.ports, f"Endpoints {eps.name} port"), name)
            for ip in b.ips(ep.addresses, f"EndpointSlice {eps.name} address"):
                target = _under(name, endpoint_label(ep.hostname, ip))
                record = b.record(host=ip)
                b.put(target, record)
                if legacy:
                    b.put(legacy, record)
                b.put_ptr(ip, target)
                for srv, number in ports:
                    b.put(srv, b.record(host=target, port=number))


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
    record = b.record(host=target)
    b.put(name, record)
    if legacy:
        b.put(legacy, record)


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
        b.put(_under(settings.zone, dashed(ip), pod.ns, "pod"), b.record(host=ip))
    return b.result()


def for_pod(pod: objects.Pod, settings: settings_mod.Settings) -> dict[str, msg.Service]:
    """The records of one pod: :func:`build_pod` without the problems."""
    return build_pod(pod, settings).records


def build_cluster(dns_service: objects.Service | None, settings: settings_mod.Settings) -> Result:
    """``dns-version.<zone>`` TXT and ``ns.dns.<zone>`` A/AAAA (from the DNS service)."""
    b = _Builder("cluster", settings)
    b.put(_under(settings.zone, "dns-version"),
          msg.Service(text=settings.schema_version, ttl=settings.ttl))
    if dns_service is not None:
        if dns_service.headless or dns_service.type == objects.EXTERNAL_NAME:
            b.problem(f"DNS service {dns_service.ns}/{dns_service.name} has no ClusterIP, "
                      f"no ns.dns records")
        for ip in b.ips(() if dns_service.headless else dns_service.cluster_ips,
                        "DNS service clusterIP"):
            b.put(_under(settings.zone, "ns", "dns"), b.record(host=ip))
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
    for ref in sorted(services):
        add(build_service(services[ref], slices.get(ref, ()), settings))
    for pod in sorted(state.pods, key=lambda p: p.ref):
        add(build_pod(pod, settings))
    return Desired(values, tuple(problems))


def desired(state: State, settings: settings_mod.Settings) -> dict[str, str]:
    """etcd key -> JSON value of everything kube2sky should have written: :func:`build`
    without the problems."""
    return build(state, settings).values
