"""The record contract between kube2sky (writer) and skydns (reader).

Rules of this module:

1. Stdlib only. kube2sky imports it without loading the DNS server or dnspython.
2. One JSON format: SkyDNS's ``msg.Service`` field names (``host, port, priority, weight,
   text, mail, ttl, targetstrip, group``), written compact in that order with zero values
   omitted; unknown fields are ignored on read; the etcd key is never stored in the value.
3. One key mapping: a DNS name is ``/<prefix>/`` + its labels reversed and lower-cased.
   The prefix is always a parameter, never a global.
4. Pure: no I/O, no clock, no randomness.
5. ``decode`` is total: whatever bytes it is given (any JSON, NaN/Infinity/1e400, huge
   numbers, deep nesting, non-UTF-8, lone surrogates, megabytes), it returns a valid record
   or raises ``RecordError``, never anything else. A record it returns can always be
   answered: ``host`` is empty, an IPv4 address, an IPv6 address without a zone id
   (``fe80::1%eth0`` is refused), or a DNS host name (labels of letters, digits, ``-``, ``_``
   and ``*``, 1-63 bytes each, at most 255 bytes on the wire); every string encodes as UTF-8;
   numbers are integers in their field's range (an integral float such as ``30.0`` counts).
   Text of any length is accepted (answers cut it).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import math
import re

DEFAULT_PREFIX = "skydns"
WILDCARDS = frozenset({"*", "any"})

# Field order of SkyDNS's Go struct; encode() writes them in this order.
_FIELDS = ("host", "port", "priority", "weight", "text", "mail", "ttl", "targetstrip", "group")
_INT_FIELDS = frozenset({"port", "priority", "weight", "ttl", "targetstrip"})
_INT_LIMITS = {"port": 0xFFFF, "priority": 0xFFFF, "weight": 0xFFFF, "ttl": 0xFFFFFFFF,
               "targetstrip": 255}
# A host name (rule 5): dot-separated labels of 1-63 letters, digits, "-", "_" or "*", an
# optional final dot; the length (at most 253 characters without it) is checked apart.
HOST_NAME_PATTERN = r"(?:[A-Za-z0-9_*-]{1,63}\.)*[A-Za-z0-9_*-]{1,63}\.?"  # also used by skydns.store
_HOST_NAME = re.compile(HOST_NAME_PATTERN + r"\Z")
_MAX_NAME_TEXT = 253
# An IPv4 address as ``ipaddress`` reads it and writes it: four decimal octets of ASCII digits,
# no leading zero, none above 255 (the answer path's quick test, skydns.answering and encode).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_TEXT = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
# Longest quoted value in an error message, characters (a bad value may be a megabyte).
_SHOWN = 60


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
        if "%" in host:  # a zone id: no AAAA record can hold it (rule 5)
            return HostType.NAME
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
    """Parse SkyDNS JSON into a record; unknown fields are ignored (rule 5: total).

    Raises:
        RecordError: the value is not a JSON object, a known field has the wrong type or is
            out of range, or ``host`` is neither an IP address nor a valid host name.
    """
    where = key or "value"
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
        obj = _JSON.decode(text)
    except RecordError as exc:
        raise RecordError(f"{where}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise RecordError(f"{where}: not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise RecordError(f"{where}: not JSON: {_short(str(exc))}") from None
    except RecursionError:
        raise RecordError(f"{where}: not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: want a JSON object, got {type(obj).__name__}")
    fields: dict[str, object] = {}
    for field in _FIELDS:
        value = obj.get(field)
        if value is None:
            continue
        if field in _INT_FIELDS:
            fields[field] = _integer(where, field, value)
        elif field == "mail":
            if not isinstance(value, bool):
                raise RecordError(f"{where}: mail must be true or false, got {_shown(value)}")
            fields[field] = value
        elif not isinstance(value, str):
            raise RecordError(f"{where}: {field} must be a string, got {_shown(value)}")
        else:
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise RecordError(f"{where}: {field} is not valid Unicode "
                                      "(a lone surrogate escape)") from None
            if field == "host":
                _check_host(where, value)
            fields[field] = value
    return Service(key=key, **fields)  # type: ignore[arg-type]


def _reject_constant(name: str) -> object:
    raise RecordError(f"{name} is not a number a record can hold")


# One decoder for every value: NaN, Infinity and -Infinity are refused while parsing.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _integer(where: str, field: str, value: object) -> int:
    """An integer field's value in range, from an int or an integral finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{where}: {field} must be an integer, got {_shown(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise RecordError(f"{where}: {field} must be an integer, got {_shown(value)}")
        value = int(value)
    if not 0 <= value <= _INT_LIMITS[field]:
        raise RecordError(f"{where}: {field} {_shown(value)} out of range 0..{_INT_LIMITS[field]}")
    return value


def _check_host(where: str, host: str) -> None:
    """RecordError unless host is empty, an IP address, or a valid host name (rule 5)."""
    if not host:
        return
    kind = host_type(host)
    if kind is HostType.IPV4 or kind is HostType.IPV6:
        return
    if "%" in host and ":" in host:
        raise RecordError(f"{where}: host {_shown(host)} is an IPv6 address with a zone id")
    if len(host.rstrip(".")) > _MAX_NAME_TEXT:
        raise RecordError(f"{where}: host is {len(host)} characters, longer than a DNS name")
    if not _HOST_NAME.match(host):
        raise RecordError(f"{where}: host {_shown(host)} is neither an IP address nor a valid "
                          "host name")


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _shown(value: object) -> str:
    """repr(value), cut for a log line."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {len(str(abs(value)))}-digit number" if value.bit_length() < 14000 else "a huge number"
    return _short(repr(value))


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
