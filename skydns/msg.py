"""The record contract between kube2sky (writer) and skydns (reader).

Rules of this module:

1. Stdlib only. kube2sky imports it without loading the DNS server or dnspython.
2. One JSON format: SkyDNS's ``msg.Service`` field names (``host, port, priority, weight,
   text, mail, ttl, targetstrip, group``), written compact in that order with zero values
   omitted; unknown fields are ignored on read; the etcd key is never stored in the value.
3. One key mapping: a DNS name is ``/<prefix>/`` + its labels reversed and lower-cased.
   The prefix is always a parameter, never a global.
4. Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json

DEFAULT_PREFIX = "skydns"
WILDCARDS = frozenset({"*", "any"})

# Field order of SkyDNS's Go struct; encode() writes them in this order.
_FIELDS = ("host", "port", "priority", "weight", "text", "mail", "ttl", "targetstrip", "group")
_INT_FIELDS = frozenset({"port", "priority", "weight", "ttl", "targetstrip"})
_INT_LIMITS = {"port": 0xFFFF, "priority": 0xFFFF, "weight": 0xFFFF, "ttl": 0xFFFFFFFF,
               "targetstrip": 255}


class RecordError(ValueError):
    """A value in etcd is not a valid SkyDNS record."""


class PathError(ValueError):
    """A DNS name or etcd key cannot be mapped."""


class HostType(enum.Enum):
    """What the ``host`` field of a record holds."""

    NONE = "none"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    NAME = "name"


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """One SkyDNS record: the rdata of an A/AAAA/CNAME/SRV/MX/TXT/PTR answer.

    The record type is not stored: it follows from ``host`` (an IPv4 or IPv6 address, or a
    domain name), ``text`` and ``mail``. ``key`` is the etcd key the record was read from; it
    is filled by the reader and never serialised.
    """

    host: str = ""
    port: int = 0
    priority: int = 0
    weight: int = 0
    text: str = ""
    mail: bool = False
    ttl: int = 0
    targetstrip: int = 0
    group: str = ""
    key: str = dataclasses.field(default="", compare=False)

    @property
    def host_type(self) -> HostType:
        return host_type(self.host)


def host_type(host: str) -> HostType:
    """Classify a ``host`` value: empty, IPv4, IPv6 or a domain name."""
    if not host:
        return HostType.NONE
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return HostType.IPV6
        except ValueError:
            return HostType.NAME
    if host[0].isdigit() and host[-1].isdigit():
        try:
            ipaddress.IPv4Address(host)
            return HostType.IPV4
        except ValueError:
            pass
    return HostType.NAME


def encode(record: Service) -> str:
    """Serialise a record as compact SkyDNS JSON (zero values omitted, SkyDNS field order)."""
    out: dict[str, object] = {}
    for field in _FIELDS:
        value = getattr(record, field)
        if value:
            out[field] = value
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def decode(data: bytes | str, key: str = "") -> Service:
    """Parse SkyDNS JSON into a record; unknown fields are ignored.

    Raises:
        RecordError: the value is not a JSON object or a known field has the wrong type.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{key or 'value'}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{key or 'value'}: want a JSON object, got {type(obj).__name__}")
    fields: dict[str, object] = {}
    for field in _FIELDS:
        if field not in obj or obj[field] is None:
            continue
        value = obj[field]
        if field in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise RecordError(f"{key or 'value'}: {field} must be an integer, got {value!r}")
            value = int(value)
            if not 0 <= value <= _INT_LIMITS[field]:
                raise RecordError(f"{key or 'value'}: {field} {value} out of range "
                                  f"0..{_INT_LIMITS[field]}")
        elif field == "mail":
            if not isinstance(value, bool):
                raise RecordError(f"{key or 'value'}: mail must be true or false, got {value!r}")
        elif not isinstance(value, str):
            raise RecordError(f"{key or 'value'}: {field} must be a string, got {value!r}")
        fields[field] = value
    return Service(key=key, **fields)  # type: ignore[arg-type]


def leaf_label(value: str) -> str:
    """kube2sky's leaf label: FNV-1a 32-bit of the value JSON, unpadded lower-case hex."""
    h = 0x811C9DC5
    for byte in value.encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return format(h, "x")


def normalize(name: str) -> str:
    """Lower-case a DNS name and make it fully qualified (``.`` for the root)."""
    name = name.strip().lower()
    if not name or name == ".":
        return "."
    return name if name.endswith(".") else name + "."


def labels(name: str) -> list[str]:
    """The labels of a name, left to right, lower-cased (the root has none)."""
    name = normalize(name)
    if name == ".":
        return []
    parts = name[:-1].split(".")
    if any(not part for part in parts):
        raise PathError(f"{name!r} has an empty label")
    return parts


def name_to_key(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``web.default.svc.cluster.local.`` -> ``/skydns/local/cluster/svc/default/web``."""
    parts = labels(name)
    return "/" + "/".join([prefix.strip("/"), *reversed(parts)])


def key_to_name(key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The inverse of :func:`name_to_key`; a trailing slash is ignored.

    Raises:
        PathError: the key is not under ``/<prefix>/``.
    """
    head = "/" + prefix.strip("/") + "/"
    if not key.startswith(head):
        raise PathError(f"key {key!r} is not under {head!r}")
    parts = [part for part in key[len(head):].split("/") if part]
    if not parts:
        return "."
    return ".".join(reversed(parts)).lower() + "."


def key_for_lookup(name: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, tuple[str, ...]]:
    """The key to read for a name, and the path segments to match when it has a wildcard.

    Returns ``(key, pattern)``: ``key`` is the path up to (not including) the first ``*`` or
    ``any`` label; ``pattern`` is the full list of path segments below the prefix when the name
    has a wildcard (empty otherwise), to be checked with :func:`matches`.
    """
    segments = list(reversed(labels(name)))
    cut = next((i for i, seg in enumerate(segments) if seg in WILDCARDS), None)
    base = "/" + prefix.strip("/")
    if cut is None:
        return "/".join([base, *segments]), ()
    return "/".join([base, *segments[:cut]]), tuple(segments)


def key_segments(key: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, ...]:
    """The path segments of a key below ``/<prefix>/``."""
    head = "/" + prefix.strip("/") + "/"
    if not key.startswith(head):
        raise PathError(f"key {key!r} is not under {head!r}")
    return tuple(part for part in key[len(head):].split("/") if part)


def matches(segments: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a key's segments fall at or below a wildcard pattern (``*``/``any`` = one label)."""
    if len(segments) < len(pattern):
        return False
    return all(want in WILDCARDS or want == got for want, got in zip(pattern, segments))


# Reverse names ---------------------------------------------------------------------------------

def ip_to_reverse_name(ip: str) -> str:
    """``10.0.0.1`` -> ``1.0.0.10.in-addr.arpa.``; IPv6 gives the 32-nibble ``ip6.arpa.`` name.

    Raises:
        PathError: not an IP address.
    """
    try:
        return ipaddress.ip_address(ip).reverse_pointer + "."
    except ValueError:
        raise PathError(f"{ip!r} is not an IP address") from None


def reverse_name_to_ip(name: str) -> str | None:
    """The address a complete reverse name stands for, or None (partial names, other names)."""
    parts = labels(name)
    if parts[-2:] == ["in-addr", "arpa"] and len(parts) == 6:
        octets = parts[:4]
        if all(o.isdigit() and len(o) <= 3 and int(o) <= 255 for o in octets):
            return ".".join(str(int(o)) for o in reversed(octets))
        return None
    if parts[-2:] == ["ip6", "arpa"] and len(parts) == 34:
        nibbles = parts[:32]
        if all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            hexstr = "".join(reversed(nibbles))
            return str(ipaddress.IPv6Address(int(hexstr, 16)))
        return None
    return None


def ip_to_reverse_key(ip: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``10.0.0.1`` -> ``/skydns/arpa/in-addr/10/0/0/1`` (the address back in order)."""
    return name_to_key(ip_to_reverse_name(ip), prefix)


def reverse_key_to_ip(key: str, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The inverse of :func:`ip_to_reverse_key` (leaf labels below the address are ignored)."""
    segs = key_segments(key, prefix)
    if segs[:2] == ("arpa", "in-addr") and len(segs) >= 6:
        return reverse_name_to_ip(".".join(reversed(segs[:6])))
    if segs[:2] == ("arpa", "ip6") and len(segs) >= 34:
        return reverse_name_to_ip(".".join(reversed(segs[:34])))
    return None


def is_reverse(name: str) -> bool:
    """Whether a name lies under ``in-addr.arpa.`` or ``ip6.arpa.``."""
    name = normalize(name)
    return name.endswith(".in-addr.arpa.") or name.endswith(".ip6.arpa.") or name in (
        "in-addr.arpa.", "ip6.arpa.")


def is_subdomain(name: str, zone: str) -> bool:
    """Whether ``name`` equals ``zone`` or lies below it (case-insensitive)."""
    name, zone = normalize(name), normalize(zone)
    return zone == "." or name == zone or name.endswith("." + zone)
