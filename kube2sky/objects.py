"""Kubernetes objects as kube2sky sees them: raw API JSON -> small frozen values.

Rules of this module:

1. PURE: no I/O, imports nothing from the project. Input is the dict the API server returns
   in JSON (camelCase keys: ``spec.clusterIP``, ``metadata.resourceVersion``), as found in a
   list's ``items``, a watch event's ``object`` or a YAML manifest.
2. Only the fields DNS needs are kept. Defaults the API server would fill in are applied here
   too (a manifest port without ``protocol`` is TCP, a slice endpoint without ``ready`` is
   ready), so manifests and API objects give the same values.
3. Structural garbage (not an object, no namespace/name, a field of the wrong JSON type)
   raises :class:`Invalid` naming ``namespace/name`` and why. Nothing else is raised.
   Values that are well-formed but unusable for DNS (a bad IP, an unnamed port, an
   invalid name) are kept as they are: ``records`` skips them and says why.
4. core/v1 Endpoints are converted to the EndpointSlice model (:func:`parse_endpoints`), so
   records are computed one way whatever the cluster serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TOLERATE_UNREADY_ANNOTATION = "service.alpha.kubernetes.io/tolerate-unready-endpoints"

# Service types (spec.type); anything else is kept as given.
CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
LOAD_BALANCER = "LoadBalancer"
EXTERNAL_NAME = "ExternalName"


class Invalid(ValueError):
    """A Kubernetes object that cannot be read; names the object and the reason."""

    def __init__(self, kind: str, namespace: str, name: str, reason: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.reason = reason
        super().__init__(f"{kind} {namespace or '?'}/{name or '?'}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class Port:
    """One service or endpoint port. ``name`` may be empty; ``port`` 0 means unknown."""

    name: str
    protocol: str
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """A Service, reduced to what DNS needs."""

    ns: str
    name: str
    # spec.type ("ClusterIP" when absent).
    type: str
    # spec.clusterIP followed by the other spec.clusterIPs, duplicates removed, as written
    # (not validated); empty or "None" are not in it.
    cluster_ips: tuple[str, ...]
    ports: tuple[Port, ...]
    # spec.externalName as written ("" unless type ExternalName).
    external_name: str
    # spec.publishNotReadyAddresses, or the tolerate-unready annotation set to "true".
    publish_not_ready: bool
    # spec.clusterIP (or clusterIPs[0]) is "None".
    headless: bool
    resource_version: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return self.ns, self.name


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: its addresses and conditions.

    ``ports`` is None for EndpointSlice endpoints (the slice's ports apply) and the subset's
    ports for endpoints converted from core/v1 Endpoints.
    """

    addresses: tuple[str, ...]
    hostname: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    ports: tuple[Port, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointSlice:
    """An EndpointSlice (or a converted core/v1 Endpoints object)."""

    ns: str
    name: str
    # The service it belongs to (label kubernetes.io/service-name; the Endpoints' own name).
    service: str
    # "IPv4", "IPv6", "FQDN"; "" for a converted Endpoints object (mixed families).
    address_type: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]
    resource_version: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return self.ns, self.name

    @property
    def service_ref(self) -> tuple[str, str]:
        return self.ns, self.service


@dataclasses.dataclass(frozen=True, slots=True)
class Pod:
    """A Pod: its IPs (status.podIPs, status.podIP) and phase."""

    ns: str
    name: str
    ips: tuple[str, ...]
    phase: str
    resource_version: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return self.ns, self.name


# ---- reading raw JSON -----------------------------------------------------------------------

class _Reader:
    """Typed access to one raw object's fields; wrong types raise Invalid."""

    __slots__ = ("kind", "ns", "name")

    def __init__(self, kind: str, raw: object) -> None:
        self.kind = kind
        self.ns, self.name = ref(raw)
        if not isinstance(raw, Mapping):
            raise Invalid(kind, "", "", f"want a JSON object, got {type(raw).__name__}")
        if not self.name:
            raise Invalid(kind, self.ns, self.name, "metadata.name is missing")
        if not self.ns:
            raise Invalid(kind, self.ns, self.name, "metadata.namespace is missing")

    def fail(self, reason: str) -> Invalid:
        return Invalid(self.kind, self.ns, self.name, reason)

    def obj(self, parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"{where} must be an object, got {type(value).__name__}")
        return value

    def items(self, parent: Mapping[str, Any], key: str, where: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{where} must be a list, got {type(value).__name__}")
        return value

    def objs(self, parent: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
        out = []
        for i, item in enumerate(self.items(parent, key, where)):
            if not isinstance(item, Mapping):
                raise self.fail(f"{where}[{i}] must be an object, got {type(item).__name__}")
            out.append(item)
        return out

    def text(self, parent: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(f"{where} must be a string, got {value!r}")
        return value

    def texts(self, parent: Mapping[str, Any], key: str, where: str) -> list[str]:
        out = []
        for i, item in enumerate(self.items(parent, key, where)):
            if not isinstance(item, str):
                raise self.fail(f"{where}[{i}] must be a string, got {item!r}")
            out.append(item)
        return out

    def flag(self, parent: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = parent.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"{where} must be true or false, got {value!r}")
        return value

    def number(self, parent: Mapping[str, Any], key: str, where: str) -> int:
        value = parent.get(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where} must be an integer, got {value!r}")
        return value

    def ports(self, parent: Mapping[str, Any], key: str, where: str) -> tuple[Port, ...]:
        out = []
        for i, raw in enumerate(self.objs(parent, key, where)):
            at = f"{where}[{i}]"
            out.append(Port(
                name=self.text(raw, "name", at + ".name"),
                protocol=self.text(raw, "protocol", at + ".protocol", "TCP") or "TCP",
                port=self.number(raw, "port", at + ".port"),
            ))
        return tuple(out)


def ref(raw: object) -> tuple[str, str]:
    """(namespace, name) of a raw object, ("", "") parts where missing; never raises."""
    if not isinstance(raw, Mapping):
        return "", ""
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return "", ""
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else ""), (name if isinstance(name, str) else "")


def _version(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) else ""


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def parse_service(raw: object) -> Service:
    """A core/v1 Service.

    Raises:
        Invalid: not a readable Service.
    """
    r = _Reader("Service", raw)
    assert isinstance(raw, Mapping)
    meta = r.obj(raw, "metadata", "metadata")
    annotations = r.obj(meta, "annotations", "metadata.annotations")
    spec = r.obj(raw, "spec", "spec")
    first = r.text(spec, "clusterIP", "spec.clusterIP").strip()
    ips = [first, *(ip.strip() for ip in r.texts(spec, "clusterIPs", "spec.clusterIPs"))]
    headless = (first or (ips[1] if len(ips) > 1 else "")) == "None"
    tolerate = annotations.get(TOLERATE_UNREADY_ANNOTATION)
    return Service(
        ns=r.ns,
        name=r.name,
        type=r.text(spec, "type", "spec.type", CLUSTER_IP) or CLUSTER_IP,
        cluster_ips=_unique([ip for ip in ips if ip and ip != "None"]),
        ports=r.ports(spec, "ports", "spec.ports"),
        external_name=r.text(spec, "externalName", "spec.externalName").strip(),
        publish_not_ready=(r.flag(spec, "publishNotReadyAddresses",
                                  "spec.publishNotReadyAddresses", False)
                           or (isinstance(tolerate, str) and tolerate.lower() == "true")),
        headless=headless,
        resource_version=_version(raw),
    )


def parse_endpoint_slice(raw: object, previous: EndpointSlice | None = None) -> EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice.

    A slice without the ``kubernetes.io/service-name`` label belongs to no service
    (``service`` is ""); records ignores it. With ``previous`` (the version held before),
    an endpoint equal to one of it is that very object: a change of a big slice then costs
    only its changed endpoints in ``records.headless_delta``.

    Raises:
        Invalid: not a readable EndpointSlice.
    """
    r = _Reader("EndpointSlice", raw)
    assert isinstance(raw, Mapping)
    meta = r.obj(raw, "metadata", "metadata")
    labels = r.obj(meta, "labels", "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    endpoints = _plain_endpoints(raw.get("endpoints"), previous.endpoints if previous is not None else ())
    if endpoints is None:
        endpoints = _slice_endpoints(r, raw)
    return EndpointSlice(
        ns=r.ns,
        name=r.name,
        service=service if isinstance(service, str) else "",
        address_type=r.text(raw, "addressType", "addressType"),
        endpoints=endpoints,
        ports=r.ports(raw, "ports", "ports"),
        resource_version=_version(raw),
    )


_FLAG = (bool, type(None))


def _plain_endpoints(raw: object, previous: Iterable[Endpoint] = ()) -> tuple[Endpoint, ...] | None:
    """A slice's endpoints when every field has its JSON type (the API server's output), read
    without the checks' bookkeeping; None when anything is unusual: then
    :func:`_slice_endpoints` reads them (and names what is wrong). Equal to it whenever it
    answers (a seeded random test compares them); a slice of 100 endpoints costs about a
    quarter of the checked reading. An endpoint equal to one of ``previous`` is that object."""
    if raw is None:
        return ()
    if type(raw) is not list:
        return None
    known = {(ep.addresses, ep.hostname, ep.ready, ep.serving, ep.terminating): ep
             for ep in previous if ep.ports is None}
    out = []
    for ep in raw:
        if type(ep) is not dict:
            return None
        addresses = ep.get("addresses")
        hostname = ep.get("hostname")
        cond = ep.get("conditions")
        if cond is None:
            ready = serving = True
            terminating = False
        elif type(cond) is dict:
            ready, serving, terminating = cond.get("ready"), cond.get("serving"), cond.get("terminating")
            if type(ready) not in _FLAG or type(serving) not in _FLAG or type(terminating) not in _FLAG:
                return None
            ready = True if ready is None else ready
            serving = ready if serving is None else serving
            terminating = terminating or False
        else:
            return None
        if hostname is None:
            hostname = ""
        elif type(hostname) is not str:
            return None
        if addresses is None:
            addresses = ()
        elif type(addresses) is not list:
            return None
        elif len(addresses) == 1 and type(addresses[0]) is str:
            addresses = (addresses[0].strip(),)
        else:
            if not all(type(a) is str for a in addresses):
                return None
            addresses = _unique([a.strip() for a in addresses])
        fields = (addresses, hostname, ready, serving, terminating)
        ep = known.get(fields)
        out.append(ep if ep is not None else Endpoint(*fields))
    return tuple(out)


def _slice_endpoints(r: _Reader, raw: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """A slice's endpoints, every field checked (raises Invalid naming the field)."""
    endpoints = []
    for i, ep in enumerate(r.objs(raw, "endpoints", "endpoints")):
        at = f"endpoints[{i}]"
        cond = r.obj(ep, "conditions", at + ".conditions")
        ready = r.flag(cond, "ready", at + ".conditions.ready", True)
        endpoints.append(Endpoint(
            addresses=_unique([a.strip() for a in r.texts(ep, "addresses", at + ".addresses")]),
            hostname=r.text(ep, "hostname", at + ".hostname"),
            ready=ready,
            serving=r.flag(cond, "serving", at + ".conditions.serving", ready),
            terminating=r.flag(cond, "terminating", at + ".conditions.terminating", False),
        ))
    return tuple(endpoints)


def parse_endpoints(raw: object) -> EndpointSlice:
    """A core/v1 Endpoints object, converted to the slice model.

    ``subsets[].addresses`` are ready, ``subsets[].notReadyAddresses`` are not; each endpoint
    carries its subset's ports. The slice is named after the Endpoints object (which is named
    after its service).

    Raises:
        Invalid: not a readable Endpoints object.
    """
    r = _Reader("Endpoints", raw)
    assert isinstance(raw, Mapping)
    endpoints = []
    for i, subset in enumerate(r.objs(raw, "subsets", "subsets")):
        at = f"subsets[{i}]"
        ports = r.ports(subset, "ports", at + ".ports")
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, addr in enumerate(r.objs(subset, field, f"{at}.{field}")):
                where = f"{at}.{field}[{j}]"
                ip = r.text(addr, "ip", where + ".ip").strip()
                endpoints.append(Endpoint(
                    addresses=(ip,) if ip else (),
                    hostname=r.text(addr, "hostname", where + ".hostname"),
                    ready=ready,
                    serving=ready,
                    terminating=False,
                    ports=ports,
                ))
    return EndpointSlice(
        ns=r.ns,
        name=r.name,
        service=r.name,
        address_type="",
        endpoints=tuple(endpoints),
        ports=(),
        resource_version=_version(raw),
    )


def parse_pod(raw: object) -> Pod:
    """A core/v1 Pod: status.podIP first, then the other status.podIPs.

    Raises:
        Invalid: not a readable Pod.
    """
    r = _Reader("Pod", raw)
    assert isinstance(raw, Mapping)
    status = r.obj(raw, "status", "status")
    ips = [r.text(status, "podIP", "status.podIP").strip()]
    for i, item in enumerate(r.objs(status, "podIPs", "status.podIPs")):
        ips.append(r.text(item, "ip", f"status.podIPs[{i}].ip").strip())
    return Pod(
        ns=r.ns,
        name=r.name,
        ips=_unique([ip for ip in ips if ip]),
        phase=r.text(status, "phase", "status.phase"),
        resource_version=_version(raw),
    )


# kind -> parser, for lists and watch events whose kind is known to the caller, and for
# manifests (their "kind" field).
PARSERS: dict[str, Callable[[object], Service | EndpointSlice | Pod]] = {
    "Service": parse_service,
    "EndpointSlice": parse_endpoint_slice,
    "Endpoints": parse_endpoints,
    "Pod": parse_pod,
}


def parse(kind: str, raw: object) -> Service | EndpointSlice | Pod:
    """Parse a raw object of a known kind (a key of :data:`PARSERS`).

    Raises:
        Invalid: unknown kind or not a readable object of that kind.
    """
    parser = PARSERS.get(kind)
    if parser is None:
        ns, name = ref(raw)
        raise Invalid(kind, ns, name, f"kind {kind!r} is not one kube2sky reads")
    return parser(raw)
