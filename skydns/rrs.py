"""SkyDNS records (msg.Service) -> dnspython rdata.

PURE: no I/O. Rules of this module:

1. The record type is never stored; callers pick the builder from the query type and
   ``msg.host_type(record.host)``. Builders take already-checked records and construct
   rdata objects directly (no zone-file text parsing on the answer path).
2. Defaults: a record without ``ttl`` gets ``settings.ttl``; a record without ``priority``
   gets ``settings.default_priority``; TXT text is split into 255-byte strings and cut at
   ``TXT_MAX`` (65025) bytes, the most one rdata can hold.
3. ``targetstrip`` drops that many left-most labels of an SRV/MX/NS target (SkyDNS applies
   it to the host name and to names synthesised from keys alike); stripping every label
   keeps the name unchanged (SkyDNS: "we overshot the name, use the original one").
"""

from __future__ import annotations

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.HINFO
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from skydns import msg, settings as settings_mod

IN = dns.rdataclass.IN
CH = dns.rdataclass.CH
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
CNAME = dns.rdatatype.CNAME
SRV = dns.rdatatype.SRV
MX = dns.rdatatype.MX
TXT = dns.rdatatype.TXT
PTR = dns.rdatatype.PTR
NS = dns.rdatatype.NS
SOA = dns.rdatatype.SOA
HINFO = dns.rdatatype.HINFO

# SOA timers of DESIGN section 3: refresh, retry, expire (seconds).
SOA_REFRESH = 7200
SOA_RETRY = 1800
SOA_EXPIRE = 86400

_TXT_CHUNK = 255
# Most text bytes in one TXT rdata: 255 strings of 255 bytes (1 + 255 bytes each on the wire),
# since an rdata holds at most 65535 bytes. Longer text is cut, never an unencodable answer.
TXT_MAX = _TXT_CHUNK * _TXT_CHUNK


def ttl(record: msg.Service, settings: settings_mod.Settings) -> int:
    """The record's TTL in seconds, or the default when it has none."""
    return record.ttl or settings.ttl


def priority(record: msg.Service, settings: settings_mod.Settings) -> int:
    """The record's SRV priority / MX preference, or the default when it has none."""
    return record.priority or settings.default_priority


def name(text: str) -> dns.name.Name:
    """An absolute dnspython name from text (a missing final dot is added)."""
    return dns.name.from_text(text)


def address(record: msg.Service, rdtype: int | None = None) -> dns.rdata.Rdata:
    """An A or AAAA rdata for a record whose host is an IP address."""
    if rdtype is None:
        rdtype = AAAA if ":" in record.host else A
    if rdtype == A:
        return dns.rdtypes.IN.A.A(IN, A, record.host)
    return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, record.host)


def address_text(ip: str, rdtype: int) -> dns.rdata.Rdata:
    """An A or AAAA rdata for an address given as text."""
    if rdtype == A:
        return dns.rdtypes.IN.A.A(IN, A, ip)
    return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, ip)


def cname(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, target)


def ptr(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.PTR.PTR(IN, PTR, target)


def ns(target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.NS.NS(IN, NS, target)


def srv(prio: int, weight: int, port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.SRV.SRV(IN, SRV, prio, weight, port, target)


def mx(preference: int, exchange: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.MX.MX(IN, MX, preference, exchange)


def txt(text: str, rdclass: int = IN) -> dns.rdata.Rdata:
    """A TXT rdata; text longer than 255 bytes is split into 255-byte strings, text longer than
    ``TXT_MAX`` bytes is cut there (no rdata can hold more)."""
    data = text.encode()[:TXT_MAX]
    chunks = [data[i:i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(rdclass, TXT, chunks)


def txt_chunks(text: str) -> tuple[bytes, ...]:
    """The character-strings of a TXT rdata for text: 255-byte pieces, cut at ``TXT_MAX``."""
    data = text.encode()[:TXT_MAX]
    return tuple(data[i:i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)) or (b"",)


def txt_from_chunks(chunks: tuple[bytes, ...], rdclass: int = IN) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.TXT.TXT(rdclass, TXT, chunks)


def soa_rdata(mname: dns.name.Name, rname: dns.name.Name, serial: int, refresh: int, retry: int,
              expire: int, minimum: int) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.SOA.SOA(IN, SOA, mname, rname, serial, refresh, retry, expire, minimum)


def hinfo(cpu: str | bytes, os: str | bytes) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.HINFO.HINFO(IN, HINFO, cpu, os)


def soa(zone: dns.name.Name, serial: int, settings: settings_mod.Settings) -> dns.rdata.Rdata:
    """The synthesised SOA of a zone: ``ns.dns.<zone> hostmaster.<zone> serial 7200 1800 86400 neg``."""
    mname = dns.name.Name((b"ns", b"dns") + zone.labels)
    if settings.hostmaster:
        rname = dns.name.from_text(settings.hostmaster.replace("@", "."))
    else:
        rname = dns.name.Name((b"hostmaster",) + zone.labels)
    return dns.rdtypes.ANY.SOA.SOA(IN, SOA, mname, rname, serial & 0xFFFFFFFF, SOA_REFRESH,
                                   SOA_RETRY, SOA_EXPIRE, settings.negative_ttl)


def strip_labels(target: str, count: int) -> str:
    """Drop ``count`` left-most labels of a fully qualified name (rule 3)."""
    if count <= 0:
        return target
    parts = target.split(".")
    # "a.b.c." splits into ["a", "b", "c", ""]: at least one real label must remain.
    if count >= len(parts) - 1:
        return target
    return ".".join(parts[count:])


def target(record: msg.Service, prefix: str) -> str:
    """The SRV/MX/NS target of a record, lower-case, fully qualified.

    A name host is the target itself; an IP host gets the name of the record's key.
    ``targetstrip`` is applied to both.
    """
    return target_of(record.host, record.key, record.targetstrip, prefix)


def target_of(host: str, key: str, targetstrip: int, prefix: str) -> str:
    """``target`` of a record with these fields (the only ones it reads)."""
    if msg.host_type(host) is msg.HostType.NAME:
        base = msg.normalize(host)
    else:
        base = msg.key_to_name(key, prefix)
    return strip_labels(base, targetstrip)
