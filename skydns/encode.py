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
4. Round robin: ``turn`` rotates every A/AAAA RRset of the answer section with more than one
   record by ``turn`` places, as the transport rotates rendered messages.
5. Too big for the limit, as ``transport.render`` cuts it: additional RRsets are dropped from
   the first one that does not fit (no TC); if answer and authority do not fit either, they are
   cut to the whole records that fit, in order, with TC set and no additional records.
6. Rendered once for every turn: when each rotated RRset names its owner by one pointer (its
   records then have one size), a rotation moves byte spans and no offset, so turn 0 is
   rendered in full (not cut), every turn is two slices per rotated RRset of it, and the cut of
   rule 5 is the same for all. Otherwise each turn is rendered on its own. ``render`` also
   says where the SOA serials are (``wire.soa_serial_offsets`` without walking the message).
7. Kept by identity, because a plan's lists are never changed once ``answering.plan`` returns
   it (answering rule 15): the bytes of an SRV RRset of many records (by its list of rdatas,
   with the head and offset they were written at), and per RRset of a glue run (rule 2's
   many one-address owners of the additional section) what it writes but its suffix's pointer.
   The glue run written last for a question name is kept with the compression table it was
   written against: when the same table comes back with a section holding the same RRsets but
   a few, each with the owner of the RRset it replaces, only those records are written again
   and the run is one join of kept bytes. The run is the last thing written, so its owners'
   suffixes are not remembered (nothing after it could point at them). Each table holds its
   objects (so no other object can have their ids) and is emptied when full (``_RUNS`` and
   ``_SRVS`` are skydns.kept memos of 8,192 records; ``_GLUE_MOST``).
   tests/skydns/test_headless_diff.py compares with dnspython.
8. A plan whose only record is one A or AAAA of the query name (the usual first answer of a
   name after its change) is written straight: header, the question, a pointer to it, the
   record, the OPT record; no compression table, no record ends, no serials. The same bytes
   as rules 1-5 write (tests/skydns/test_encode_diff.py compares with the shortcut off and
   with dnspython).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import operator
import socket
import struct

from skydns import kept as kept_mod, msg, wire

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
_HEADER = struct.Struct("!HHHHHH")


class Unsupported(Exception):
    """The plan holds something this renderer does not write (rule 3)."""


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _name_parts(text: str) -> tuple[tuple[bytes, bytes], ...]:
    """(lower-case suffix key, length-prefixed label) per label of a fully qualified name."""
    if not text.isascii() or "\\" in text:
        raise Unsupported(text)
    if text == ".":
        return ()
    body = text[:-1].encode()
    low = body.lower()
    parts = []
    pos = 0
    for label in body.split(b"."):
        size = len(label)
        if not size or size > 63:
            raise Unsupported(text)
        parts.append((low[pos:], _LENGTHS[size] + label))  # the suffix key is a slice of the name
        pos += size + 1
    return tuple(parts)


# One length byte per label size.
_LENGTHS = [bytes((n,)) for n in range(64)]


_RRTYPE = struct.Struct("!HHI")


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _srv_rdata(value: tuple) -> bytes:
    """An SRV record's rdata length and rdata: priority, weight, port, the target uncompressed."""
    prio, weight, port, target = value
    rdata = _SRVHEAD.pack(prio, weight, port) + _whole_name(target)
    return len(rdata).to_bytes(2, "big") + rdata


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _whole_name(text: str) -> bytes:
    """A name's wire form without compression (SRV targets)."""
    return b"".join([chunk for _, chunk in _name_parts(text)]) + b"\0"


_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


def _packed4_text(address: str) -> bytes:
    """The 4 bytes of an IPv4 address text, read as strictly as ``ipaddress`` reads it (four
    decimal octets, no leading zero, none above 255); Unsupported otherwise."""
    if msg.IPV4_TEXT.fullmatch(address) is None:
        raise Unsupported(address)
    return bytes(map(int, address.split(".")))


def _packed4_pton(address: str) -> bytes:
    """_packed4_text by the C library's inet_pton, which reads IPv4 as strictly (glibc and
    musl: four decimal octets, no leading zero, none above 255): a tenth of the time, on the
    first answer of a name with 100 addresses."""
    try:
        return _inet_pton(_AF_INET, address)
    except (OSError, ValueError):  # ValueError: a NUL in the text
        raise Unsupported(address) from None


def _pton_agrees() -> bool:
    """Whether this C library's inet_pton reads IPv4 as _packed4_text does (checked at import)."""
    for text in ("1.2.3.4", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3",
                 "1.2.3.4.5", " 1.2.3.4", "1.2.3.4\n", "0x1.2.3.4", "1..3.4", "\u0661.2.3.4", "1.2.3.4\0", ""):
        try:
            want = _packed4_text(text)
        except Unsupported:
            want = None
        try:
            got = _packed4_pton(text)
        except Unsupported:
            got = None
        if got != want:
            return False
    return True


_packed4 = _packed4_pton if _pton_agrees() else _packed4_text


@functools.lru_cache(maxsize=kept_mod.VALUES)
def _packed6(address: str) -> bytes:
    try:
        return ipaddress.IPv6Address(address).packed
    except ValueError:
        raise Unsupported(address) from None


# The rdata size and packer of the types whose rdata has one size.
_FIXED = {_A: 4, _AAAA: 16}
_PACK = {_A: _packed4, _AAAA: _packed6}


@functools.lru_cache(maxsize=kept_mod.NAMES)
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
            out += _whole_name(text)
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
        if rdtype == _A:
            out += _packed4(value)  # type: ignore[arg-type]
        elif rdtype == _AAAA:
            out += _packed6(value)  # type: ignore[arg-type]
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
    None when it holds something unsupported (rule 3).

    ``recursion`` sets RA; ``payload`` is our EDNS payload (advertised when the query had OPT).
    """
    body = _render(query, result, turn)
    if body is None:
        return None
    return _finish(query, result, recursion, payload, limit, body)[0]


def replies(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
            count: int) -> list[bytes] | None:
    """``reply`` for turns 0 .. count-1 (rule 4)."""
    got = render(query, result, recursion, payload, limit, count)
    return None if got is None else got[0]


def render(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
           count: int) -> tuple[list[bytes], tuple[tuple[int, ...], ...]] | None:
    """``replies`` and, per variant, the offsets of its SOA serial fields (what
    ``wire.soa_serial_offsets`` finds in it), or None (rule 3).

    Rendered once when every rotated RRset has records of one size that name their owner by a
    pointer (then a rotation moves bytes and no offset: the cut for the limit and the serial
    offsets are the same for every turn), else every turn is rendered in full (rule 6).
    """
    answer = result.answer  # type: ignore[attr-defined]
    if count == 1 and len(answer) == 1 and _LONE and not result.additional and not result.authority:  # type: ignore[attr-defined]
        lone = _lone_address(query, result, answer[0], recursion, payload, limit)
        if lone is not None:
            return [lone], ((),)
    body = _render(query, result, 0)
    if body is None:
        return None
    rotating = body[4]
    if count <= 1 or not rotating:
        first, kept, _, _ = _finish(query, result, recursion, payload, limit, body)
        return [first], (kept,)
    if rotating is _UNEVEN:
        variants, offsets = [], []
        for turn in range(count):
            if turn:
                body = _render(query, result, turn)
                if body is None:
                    return None
            got, kept, _, _ = _finish(query, result, recursion, payload, limit, body)
            variants.append(got)
            offsets.append(kept)
        return variants, tuple(offsets)
    whole = bytes(body[0])  # turn 0, not cut: the rotations are cut from it
    first, kept, cut, tail = _finish(query, result, recursion, payload, limit, body)
    head = first[:wire.HEADER_SIZE]
    variants = [first]
    for turn in range(1, count):
        pieces = [head]
        pos = wire.HEADER_SIZE
        for start, size, n in rotating:  # type: ignore[union-attr]
            if start >= cut:
                break
            split = start + (turn % n) * size
            end = start + n * size
            pieces.append(whole[pos:start])
            pieces.append(whole[split:end])
            pieces.append(whole[start:split])
            pos = end
        if pos < cut:
            pieces.append(whole[pos:cut])
        rotated = b"".join(pieces)
        if len(rotated) > cut:
            rotated = rotated[:cut]
        variants.append(rotated + tail if tail else rotated)
    return variants, (kept,) * count


def address(rdtype: int, text: str) -> bytes:
    """The rdata of an A (``rdtype`` 1) or AAAA (28) record of the address ``text``."""
    return _PACK[rdtype](text)


# Rule 8's shortcut; tests/skydns/test_encode_diff.py turns it off to compare.
_LONE = True
_POINTER_TO_QUESTION = b"\xc0\x0c"


def _lone_address(query: wire.Query, result: object, rrset: list, recursion: bool, payload: int,
                  limit: int) -> bytes | None:
    """The reply of a plan whose only record is one A/AAAA of the query name (rule 8), or None
    when the plan is not that (``_render`` writes it then)."""
    display, owner, rdtype, ttl, rdatas = rrset
    pack = _PACK.get(rdtype)
    qname = query.qname
    if display is not None or pack is None or len(rdatas) != 1 or len(qname) < 2:
        return None
    if not owner.isascii() or "\\" in owner:
        raise Unsupported(owner)  # as _name_parts: dnspython's job
    _question_keys(qname)  # raises Unsupported for a dot inside a label, as _render does
    flags = _QR | (query.flags & _RD) | (result.rcode & 0x0F)  # type: ignore[attr-defined]
    if recursion:
        flags |= _RA
    if result.aa:  # type: ignore[attr-defined]
        flags |= _AA
    body = (qname + _QTAIL.pack(query.qtype, query.qclass) + _POINTER_TO_QUESTION
            + _RRHEAD.pack(rdtype, _IN, ttl, _FIXED[rdtype]) + pack(rdatas[0]))
    if wire.HEADER_SIZE + len(body) > (limit - 11 if query.edns else limit):
        return None  # cut by _finish (rule 5)
    if query.edns:
        return _HEADER.pack(query.id, flags, 1, 1, 0, 1) + body + _opt(payload, query.do)
    return _HEADER.pack(query.id, flags, 1, 1, 0, 0) + body


# A negative answer's SOA record as written after a question, by (the question's name in lower
# case, owner, TTL, MNAME and RNAME, the numbers after the serial): its bytes with the serial
# zeroed and where the serial is. Compression makes the bytes depend on the question's name
# only (nothing else is written before it, and nothing after it reads the names it wrote).
_SOAS: dict[tuple, tuple[bytes, int]] = {}


class _Uneven:
    """The marker of a plan whose rotations must be rendered one by one."""


_UNEVEN = _Uneven()
_ZEROS = bytes(wire.HEADER_SIZE)
_QTAIL = struct.Struct("!HH")
_POINTERS: dict[int, bytes] = {}


@functools.lru_cache(maxsize=1024)
def _rrhead(rdtype: int, ttl: int) -> bytes:
    """Type, class IN, TTL and rdata length of an A/AAAA record."""
    return _RRHEAD.pack(rdtype, _IN, ttl, _FIXED[rdtype])


def _pointer(offset: int) -> bytes:
    got = _POINTERS.get(offset)
    if got is None:
        got = (0xC000 | offset).to_bytes(2, "big")
        if len(_POINTERS) < 4096:
            _POINTERS[offset] = got
    return got


def _render(query: wire.Query, result: object, turn: int) -> tuple | None:
    """The header space (zeros), question and every record of the plan, not cut to any limit.

    Returns ``(out, ends, extra_ends, serials, rotating, counts)``: where each record of answer
    and authority ends, where each additional RRset ends (with its record count), the offsets
    of SOA serial fields, the rotated RRsets as ``(start, record size, records)`` (None when
    nothing rotates, ``_UNEVEN`` when some rotated RRset's records differ in size), and the
    record count of each section.
    """
    out = bytearray(_ZEROS)
    out += query.qname
    out += _QTAIL.pack(query.qtype, query.qclass)
    ends: list[int] = []
    extra_ends: list[tuple[int, int]] = []
    serials: list[int] = []
    counts = [0, 0, 0]
    rotating: list | _Uneven | None = None
    table: dict[bytes, int] | None = None
    writer: _Writer | None = None
    index = -1
    try:
        for section in (result.answer, result.authority, result.additional):  # type: ignore[attr-defined]
            index += 1
            if not section:
                continue
            if table is None:
                table = dict(_question_keys(query.qname))
                writer = _Writer(out, table)
            if index == 2 and len(section) >= _GLUE_RUN and _glue_run(out, table, section, extra_ends,
                                                                        query.qname):
                counts[2] += len(section)
                continue
            soa = None
            if (index == 1 and len(section) == 1 and section[0][2] == _SOA and len(section[0][4]) == 1
                    and not result.answer and not result.additional):  # type: ignore[attr-defined]
                # a negative answer's lone SOA after the question: the same bytes for every query
                # of that name spelled alike in letter case, but the serial (_SOAS)
                display, owner, _, ttl, (value,) = section[0]
                soa = (query.qname.lower(), owner if display is None else display, ttl, value[:2], value[3:])
                got = _SOAS.get(soa)
                if got is not None:
                    record, at = got
                    start = len(out)
                    out += record
                    out[start + at:start + at + 4] = value[2].to_bytes(4, "big")
                    serials.append(start + at)
                    ends.append(len(out))
                    counts[1] += 1
                    continue
                soa_start = len(out)
            for display, owner, rdtype, ttl, rdatas in section:
                n = len(rdatas)
                counts[index] += n
                many = n > 1 and index == 0 and rdtype in _ROTATE
                if many and turn:
                    shift = turn % n
                    rdatas = rdatas[shift:] + rdatas[:shift]
                owner_text = owner if display is None else display
                parts = _name_parts(owner_text)
                pointer = table.get(parts[0][0]) if parts else None
                pack = _PACK.get(rdtype)
                if pointer is not None and pack is not None:
                    # every record names its owner by the same pointer: one header for all
                    head = _pointer(pointer) + _RRHEAD.pack(rdtype, _IN, ttl, _FIXED[rdtype])
                    if n == 1:
                        out += head
                        out += pack(rdatas[0])
                        if index < 2:
                            ends.append(len(out))
                    else:
                        start = len(out)
                        out += head
                        out += head.join(map(pack, rdatas))
                        step = len(head) + _FIXED[rdtype]
                        if index < 2:
                            ends.extend(range(start + step, len(out) + 1, step))
                        if many and rotating is not _UNEVEN:
                            if rotating is None:
                                rotating = []
                            rotating.append((start, step, n))  # type: ignore[union-attr]
                elif pointer is not None and rdtype == _SRV:
                    # the owner by a pointer, the rdata position-free (an SRV target is never
                    # compressed): each record is two cached byte strings
                    head = _pointer(pointer) + _RRTYPE.pack(_SRV, _IN, ttl)
                    start = len(out)
                    kept = _SRVS.get(id(rdatas)) if n >= _GLUE_RUN else None
                    if kept is None or kept[1] != head or kept[2] != start:
                        records = [head + rdata for rdata in map(_srv_rdata, rdatas)]
                        written = list(itertools.accumulate(map(len, records), initial=start))
                        del written[0]
                        kept = (rdatas, head, start, b"".join(records), written)
                        if n >= _GLUE_RUN:
                            _SRVS.keep(id(rdatas), kept, n)
                    # (else rule 7: this very list of rdatas was written here before)
                    out += kept[3]
                    if index < 2:
                        ends.extend(kept[4])
                elif pack is not None and n == 1 and parts:
                    # one address of a name not written yet (the glue of a target): the name
                    # as _Writer.name writes it, its first label known to be new
                    key, chunk = parts[0]
                    here = len(out)
                    if here <= _MAX_POINTER:
                        table[key] = here
                    out += chunk
                    for key, chunk in parts[1:]:
                        pos = table.get(key)
                        if pos is not None:
                            out += _pointer(pos)
                            break
                        here = len(out)
                        if here <= _MAX_POINTER:
                            table[key] = here
                        out += chunk
                    else:
                        out.append(0)
                    out += _rrhead(rdtype, ttl)
                    out += pack(rdatas[0])
                    if index < 2:
                        ends.append(len(out))
                elif pack is not None:
                    if many:
                        rotating = _UNEVEN
                    head = _RRHEAD.pack(rdtype, _IN, ttl, _FIXED[rdtype])
                    for value in rdatas:
                        writer.name(owner_text)  # type: ignore[union-attr]
                        out += head
                        out += pack(value)
                        if index < 2:
                            ends.append(len(out))
                else:
                    if many:
                        rotating = _UNEVEN
                    for value in rdatas:
                        writer.name(owner_text)  # type: ignore[union-attr]
                        head_at = len(out)
                        out += _RRHEAD.pack(rdtype, _IN, ttl, 0)
                        if rdtype == _SOA:
                            mname, rname, *numbers = value
                            writer.name(mname)  # type: ignore[union-attr]
                            writer.name(rname)  # type: ignore[union-attr]
                            serials.append(len(out))
                            out += _SOATAIL.pack(*numbers)
                        else:
                            writer.rdata(rdtype, value)  # type: ignore[union-attr]
                        struct.pack_into("!H", out, head_at + 8, len(out) - head_at - 10)
                        if index < 2:
                            ends.append(len(out))
                if index == 2:
                    extra_ends.append((len(out), n))
            if soa is not None:
                if len(_SOAS) >= 4096:
                    _SOAS.clear()
                at = serials[-1] - soa_start
                record = bytearray(out[soa_start:])
                record[at:at + 4] = bytes(4)
                _SOAS[soa] = (bytes(record), at)
    except Unsupported:
        return None
    return out, ends, extra_ends, serials, rotating, counts


# The additional section of many single addresses (the glue of a headless service's SRV
# targets) is written at once when it can be (_glue_run); tests/skydns/test_encode_diff.py
# compares both ways with dnspython.
_GLUE_RUN = 8


# What a glue RRset of a run writes but its suffix's pointer, by the RRset's identity (rule 7):
# id -> (the RRset, its owner's key, the key of the owner's suffix, the owner's first label as
# written, type, class, TTL, rdata length and address, the record's length with the pointer).
_GLUE: dict[int, tuple] = {}
_GLUE_MOST = 8192
# The SRV RRsets of many records written (rule 7): id of the rdatas -> (the rdatas, the records'
# head, where they started, their bytes, where each ended).
_SRVS = kept_mod.Kept(8192)  # records held at most
_KEY1 = operator.itemgetter(1)
_KEY2 = operator.itemgetter(2)
_CHUNK = operator.itemgetter(3)
_TAIL = operator.itemgetter(4)
_SIZE = operator.itemgetter(5)


def _glue_piece(rrset: list) -> tuple | None:
    """The ``_GLUE`` entry of one RRset, or None when it is not one address of an owner with a
    first label in front of a suffix (Unsupported for what the renderer does not write)."""
    display, _, rdtype, ttl, rdatas = rrset
    if display is None or len(rdatas) != 1 or (rdtype != _A and rdtype != _AAAA):
        return None
    parts = _name_parts(display)
    if len(parts) < 2:
        return None
    chunk = parts[0][1]
    tail = _rrhead(rdtype, ttl) + _PACK[rdtype](rdatas[0])
    return rrset, parts[0][0], parts[1][0], chunk, tail, len(chunk) + 2 + len(tail)


# The glue runs written, by (the question's name, records): [the compression table before the
# run, the section (its RRsets), their _GLUE entries, the run's bytes, where it was written
# last, (end, 1) per record there, where each record ends in the run] (rule 7).
_RUNS = kept_mod.Kept(8192)  # records held by the runs at most
_PATCH_MOST = 16


def _glue_run(out: bytearray, table: dict[bytes, int], section: list, extra_ends: list,
              qname: bytes) -> bool:
    """Write an additional section of one-address RRsets whose owners are new names, each a
    first label in front of a name already written (``<endpoint>.<service>``), as the record
    loop would: the owner as its label and a pointer (rule 2). False (nothing written) when
    the section is not of that shape.

    The section is the last thing written, so no suffix of it is remembered. The run written
    last for the same question name is kept: when the compression table is the same and the
    section holds the same RRsets but a few, each of those with the same owner, only their
    records are written again (rule 7)."""
    n = len(section)
    run_key = (qname.lower(), n)
    kept = _RUNS.get(run_key)
    if kept is not None and kept[0] == table:
        changed = list(itertools.compress(range(n), map(operator.is_not, section, kept[1])))
        if len(changed) <= _PATCH_MOST:
            if not changed:
                return _kept_run(out, kept, extra_ends)
            pieces, joined, bounds = kept[2], kept[3], kept[6]
            new = []
            for i in changed:
                rrset = section[i]
                piece = _GLUE.get(id(rrset))
                if piece is None:
                    piece = _glue_piece(rrset)  # (kept in the run only: it replaces one there)
                    if piece is None:
                        break
                old = pieces[i]
                if piece[1] != old[1] or piece[2] != old[2] or piece[5] != old[5]:
                    break  # another owner or size: written in full below
                new.append(piece)
            else:
                # the same owners and sizes: the new records spliced into the kept run
                parts = []
                pos = 0
                for i, piece in zip(changed, new):
                    pieces[i] = piece  # (the kept entry is the only holder of pieces)
                    at = bounds[i - 1] if i else 0
                    parts.append(joined[pos:at])
                    parts.append(piece[3] + _pointer(table[piece[2]]) + piece[4])
                    pos = bounds[i]
                parts.append(joined[pos:])
                kept[1] = section
                kept[3] = b"".join(parts)
                return _kept_run(out, kept, extra_ends)
    pieces = list(map(_GLUE.get, map(id, section)))
    if None in pieces:
        if len(_GLUE) + len(section) > _GLUE_MOST:
            _GLUE.clear()
        for i, piece in enumerate(pieces):
            if piece is None:
                rrset = section[i]
                piece = _glue_piece(rrset)
                if piece is None:
                    return False
                pieces[i] = _GLUE[id(rrset)] = piece
    pointers = list(map(table.get, map(_KEY2, pieces)))
    keys = set(map(_KEY1, pieces))
    # (the suffixes point into what was written before, so no owner of the run is one of them)
    if None in pointers or len(keys) != len(pieces) or not table.keys().isdisjoint(keys):
        return False
    first = pointers[0]
    if pointers.count(first) == len(pointers):  # one suffix (usually)
        links = itertools.repeat(_pointer(first))
    else:
        links = map(_pointer, pointers)
    joined = b"".join(itertools.chain.from_iterable(zip(map(_CHUNK, pieces), links, map(_TAIL, pieces))))
    bounds = list(itertools.accumulate(map(_SIZE, pieces)))
    entry = [dict(table), section, pieces, joined, -1, None, bounds]
    _RUNS.keep(run_key, entry, n)
    return _kept_run(out, entry, extra_ends)


def _kept_run(out: bytearray, kept: list, extra_ends: list) -> bool:
    """Write a kept glue run's bytes and where each of its records ends (rule 7)."""
    start = len(out)
    if kept[4] != start:
        ends = list(zip(map(start.__add__, kept[6]), itertools.repeat(1)))
        kept[4], kept[5] = start, ends
    out += kept[3]
    extra_ends.extend(kept[5])
    return True


def _finish(query: wire.Query, result: object, recursion: bool, payload: int, limit: int,
            body: tuple) -> tuple[bytes, tuple[int, ...], int, bytes]:
    """The message of a rendered body: cut for ``limit`` (rule 5), the header written, the OPT
    record added. Returns it with the serial offsets that survive the cut, the cut (the body's
    length kept) and the OPT record (or b"")."""
    out, ends, extra_ends, serials, _, counts = body
    flags = _QR | (query.flags & _RD) | (result.rcode & 0x0F)  # type: ignore[attr-defined]
    if recursion:
        flags |= _RA
    if result.aa:  # type: ignore[attr-defined]
        flags |= _AA
    room = limit - 11 if query.edns else limit  # the OPT record always fits (dnspython reserves it)
    cut = len(out)
    if cut > room:
        counts = list(counts)
        base = len(query.qname) + wire.HEADER_SIZE + 4
        if (ends[-1] if ends else base) <= room:
            # additional RRsets dropped from the first that does not fit, no TC
            kept = 0
            cut = ends[-1] if ends else base
            for end, records in extra_ends:
                if end > room:
                    break
                kept += records
                cut = end
            counts[2] = kept
        else:
            # answer and authority cut to the whole records that fit, TC, no additional
            fit = bisect.bisect_right(ends, room)
            cut = ends[fit - 1] if fit else base
            counts = [min(counts[0], fit), max(0, fit - counts[0]), 0]
            flags |= _TC
        message = bytearray(out[:cut])
    else:
        message = bytearray(out)
    arcount = counts[2]
    tail = b""
    if query.edns:
        tail = _opt(payload, query.do)
        message += tail
        arcount += 1
    _HEADER.pack_into(message, 0, query.id, flags, 1, counts[0], counts[1], arcount)
    kept = tuple([offset for offset in serials if offset < cut]) if serials else ()
    return bytes(message), kept, cut, tail


@functools.lru_cache(maxsize=64)
def _opt(payload: int, do: bool) -> bytes:
    """Our OPT record: root owner, our payload, the query's DO bit."""
    return b"\x00" + _RRHEAD.pack(_OPT, payload, _DO if do else 0, 0)
