"""The fast path's renderer: an ``answering.Plan`` straight to wire bytes, no dnspython.

PURE: no I/O, no dnspython. Bytes and plain values in, bytes out.

Rules:
1. The output is byte for byte what dnspython renders for the same plan (``answering.answer`` ->
   ``Message.to_wire(want_shuffle=False)``), so the fast path and the reference path can be
   compared by difference (tests/skydns/test_encode_diff.py does, on random plans): the header
   (ID, QR, the query's RD, RA when forwarding is possible, AA, rcode), the question as the
   query spelled it, the sections in order, each RRset's records in plan order, and an OPT
   record (our payload, the query's DO bit) last when the query had one.
2. Name compression as dnspython does it: every suffix of every name written (question first)
   is remembered at its offset (when that is below 0x4000), and a later name, or the rest of a
   name, equal to a remembered suffix (letter case ignored) becomes a pointer. Names in the
   rdata of CNAME, PTR, NS, MX and SOA are compressed; SRV targets are not (RFC 2782).
3. Only what it knows: A, AAAA, CNAME, PTR, NS, MX, SRV, TXT, SOA, HINFO, names of plain ASCII
   labels (no escapes, which dnspython would interpret). Anything else returns None: the
   caller takes the dnspython path.
5. Too big for the limit, as ``transport.render`` cuts it: additional RRsets are dropped from
   the first one that does not fit (no TC); if answer and authority do not fit either, they are
   cut to the whole records that fit, in order, with TC set and no additional records.
4. Round robin: ``turn`` rotates every A/AAAA RRset of the answer section with more than one
   record by ``turn`` places, as the transport rotates rendered messages.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

from skydns import wire

_A, _NS, _CNAME, _SOA, _PTR, _HINFO, _MX, _TXT, _AAAA, _SRV = 1, 2, 5, 6, 12, 13, 15, 16, 28, 33
_OPT = 41
_IN = 1
_COMPRESSED_RDATA = frozenset({_CNAME, _PTR, _NS})
_ROTATE = (_A, _AAAA)
_MAX_POINTER = 0x3FFF
_QR, _AA, _TC, _RA = 0x8000, 0x0400, 0x0200, 0x0080
_RD = 0x0100
_DO = 0x8000
_RRHEAD = struct.Struct("!HHIH")
_SRVHEAD = struct.Struct("!HHH")
_SOATAIL = struct.Struct("!IIIII")


class Unsupported(Exception):
    """The plan holds something this renderer does not write (rule 3)."""


@functools.lru_cache(maxsize=1 << 16)
def _name_parts(text: str) -> tuple[tuple[bytes, bytes], ...]:
    """(lower-case suffix key, length-prefixed label) per label of a fully qualified name."""
    if not text.isascii() or "\\" in text:
        raise Unsupported(text)
    if text == ".":
        return ()
    labels = [label.encode() for label in text[:-1].split(".")]
    parts = []
    for i, label in enumerate(labels):
        if not label or len(label) > 63:
            raise Unsupported(text)
        key = b".".join(labels[i:]).lower()
        parts.append((key, bytes((len(label),)) + label))
    return tuple(parts)


@functools.lru_cache(maxsize=1 << 16)
def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


@functools.lru_cache(maxsize=1 << 14)
def _question_keys(qname: bytes) -> tuple[tuple[bytes, int], ...]:
    """(suffix key, offset) of every suffix of the question's name (at offset 12)."""
    out = []
    labels = []
    pos = 0
    while qname[pos]:
        length = qname[pos]
        labels.append((pos, qname[pos + 1:pos + 1 + length]))
        pos += 1 + length
    if any(b"." in label for _, label in labels):
        raise Unsupported("a dot inside a label")  # dnspython keeps such a label whole
    for i, (offset, _) in enumerate(labels):
        key = b".".join(label for _, label in labels[i:]).lower()
        out.append((key, wire.HEADER_SIZE + offset))
    return tuple(out)


class _Writer:
    __slots__ = ("out", "compress")

    def __init__(self, out: bytearray, compress: dict[bytes, int]) -> None:
        self.out = out
        self.compress = compress

    def name(self, text: str, compress: bool = True) -> None:
        out = self.out
        if not compress:
            for _, chunk in _name_parts(text):
                out += chunk
            out.append(0)
            return
        table = self.compress
        for key, chunk in _name_parts(text):
            pos = table.get(key)
            if pos is not None:
                out += (0xC000 | pos).to_bytes(2, "big")
                return
            here = len(out)
            if here <= _MAX_POINTER:
                table[key] = here
            out += chunk
        out.append(0)

    def rdata(self, rdtype: int, value: object) -> None:
        out = self.out
        if rdtype == _A or rdtype == _AAAA:
            out += _packed(value)  # type: ignore[arg-type]
        elif rdtype in _COMPRESSED_RDATA:
            self.name(value)  # type: ignore[arg-type]
        elif rdtype == _SRV:
            prio, weight, port, target = value  # type: ignore[misc]
            out += _SRVHEAD.pack(prio, weight, port)
            self.name(target, compress=False)
        elif rdtype == _MX:
            pref, target = value  # type: ignore[misc]
            out += pref.to_bytes(2, "big")
            self.name(target)
        elif rdtype == _TXT:
            for chunk in value:  # type: ignore[attr-defined]
                out.append(len(chunk))
                out += chunk
        elif rdtype == _SOA:
            mname, rname, *numbers = value  # type: ignore[misc]
            self.name(mname)
            self.name(rname)
            out += _SOATAIL.pack(*numbers)
        elif rdtype == _HINFO:
            for item in value:  # type: ignore[attr-defined]
                out.append(len(item))
                out += item
        else:
            raise Unsupported(f"type {rdtype}")


def rotations(result: object, most: int) -> int:
    """How many distinct round-robin rotations the plan's answer allows (1 = none), at most ``most``."""
    longest = 1
    for entry in result.answer:  # type: ignore[attr-defined]
        if entry[2] in _ROTATE and len(entry[4]) > longest:
            longest = len(entry[4])
    return min(longest, most)


def reply(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
          turn: int = 0) -> bytes | None:
    """The reply to ``query`` that the plan ``result`` describes (an ``answering.Plan``), or
    None when it holds something unsupported or does not fit in ``limit`` bytes (rule 3).

    ``recursion`` sets RA; ``payload`` is our EDNS payload (advertised when the query had OPT).
    """
    out = _render(query, result, recursion, payload, limit, turn, None)
    return None if out is None else out


def replies(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
            count: int) -> list[bytes] | None:
    """``reply`` for turns 0 .. count-1 (rule 4), rendered once: the records of each rotated
    RRset are moved as byte spans when each of them names its owner by a pointer (then no
    offset changes), else every turn is rendered in full."""
    spans: list[list[tuple[int, int]]] = []
    first = _render(query, result, recursion, payload, limit, 0, spans)
    if first is None or count <= 1:
        return None if first is None else [first]
    if not spans or not all(first[start] >= 0xC0 for rrset in spans for start, _ in rrset):
        out = [first]
        for turn in range(1, count):
            variant = _render(query, result, recursion, payload, limit, turn, None)
            if variant is None:
                return None
            out.append(variant)
        return out
    variants = [first]
    for turn in range(1, count):
        pieces = []
        pos = 0
        for rrset in spans:
            start, end = rrset[0][0], rrset[-1][1]
            shift = turn % len(rrset)
            pieces.append(first[pos:start])
            pieces.extend(first[a:b] for a, b in rrset[shift:])
            pieces.extend(first[a:b] for a, b in rrset[:shift])
            pos = end
        pieces.append(first[pos:])
        variants.append(b"".join(pieces))
    return variants


def _render(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
            turn: int, spans: list | None) -> bytes | None:
    flags = _QR | (query.flags & _RD) | (result.rcode & 0x0F)  # type: ignore[attr-defined]
    if recursion:
        flags |= _RA
    if result.aa:  # type: ignore[attr-defined]
        flags |= _AA
    sections = (result.answer, result.authority, result.additional)  # type: ignore[attr-defined]
    out = bytearray(wire.HEADER_SIZE)
    out += query.qname
    out += ((query.qtype << 16) | query.qclass).to_bytes(4, "big")
    # rule 5: where each record of answer and authority ends, and each additional RRset
    ends: list[int] = []
    extra_ends: list[tuple[int, int]] = []
    try:
        writer = _Writer(out, dict(_question_keys(query.qname)))
        for index, section in enumerate(sections):
            for display, owner, rdtype, ttl, rdatas in section:
                rotating = index == 0 and rdtype in _ROTATE and len(rdatas) > 1
                if rotating and turn:
                    shift = turn % len(rdatas)
                    rdatas = rdatas[shift:] + rdatas[:shift]
                record_spans = [] if rotating and spans is not None else None
                owner_text = owner if display is None else display
                for value in rdatas:
                    start = len(out)
                    writer.name(owner_text)
                    head = len(out)
                    out += _RRHEAD.pack(rdtype, _IN, ttl, 0)
                    writer.rdata(rdtype, value)
                    struct.pack_into("!H", out, head + 8, len(out) - head - 10)
                    if record_spans is not None:
                        record_spans.append((start, len(out)))
                    if index < 2:
                        ends.append(len(out))
                if index == 2:
                    extra_ends.append((len(out), len(rdatas)))
                if record_spans:
                    spans.append(record_spans)  # type: ignore[union-attr]
    except Unsupported:
        return None
    counts = [sum(len(entry[4]) for entry in section) for section in sections]
    room = limit - (11 if query.edns else 0)  # the OPT record always fits (dnspython reserves it)
    if len(out) > room:
        base = len(query.qname) + wire.HEADER_SIZE + 4
        if (ends[-1] if ends else base) <= room:
            # additional RRsets dropped from the first that does not fit, no TC
            kept = 0
            cut = ends[-1] if ends else base
            for end, size in extra_ends:
                if end > room:
                    break
                kept += size
                cut = end
            del out[cut:]
            counts[2] = kept
        else:
            # answer and authority cut to the whole records that fit, TC, no additional
            fit = 0
            while fit < len(ends) and ends[fit] <= room:
                fit += 1
            del out[ends[fit - 1] if fit else base:]
            counts = [min(counts[0], fit), max(0, fit - counts[0]), 0]
            flags |= _TC
            if spans is not None:
                spans.clear()  # a truncated answer is rendered per turn, never rotated as spans
    arcount = counts[2]
    if query.edns:
        out += b"\x00" + _RRHEAD.pack(_OPT, payload, _DO if query.do else 0, 0)
        arcount += 1
    struct.pack_into("!HHHHHH", out, 0, query.id, flags, 1, counts[0], counts[1], arcount)
    return bytes(out)
