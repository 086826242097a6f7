"""Table rows for DNS behaviour: a query and the expected reply, records as zone-file text.

A Case names a query (qname, qtype, class, EDNS) and the reply expected: rcode, the AA/TC/RA
flags, and each section as zone-file lines ``owner ttl class type rdata`` (one RR per line).
``assert_reply`` compares every section as sorted text **with TTLs and owner-name case**
(dnspython's RRset ``==`` ignores TTL, so it is never used here). A case that cannot know the
TTLs says so explicitly with ``check_ttl=False`` (zone lines then carry any TTL, e.g. 0).

Also for answering tests: ``kind`` says which result answering must return ("reply",
"forward", "resolve") and ``resolve`` the (name, type) of a Resolve.
"""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_FLAG_BITS = {"aa": dns.flags.AA, "tc": dns.flags.TC, "ra": dns.flags.RA}


@dataclasses.dataclass(frozen=True)
class Case:
    """One query and the reply it must get."""

    qname: str
    qtype: str = "A"
    rcode: str = "NOERROR"
    answer: tuple[str, ...] = ()
    authority: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    # The AA/TC/RA bits that must be set (the others must be clear), space separated.
    flags: str = "aa ra"
    qclass: str = "IN"
    # EDNS version of the query; -1: no OPT record.
    edns: int = -1
    # What answering must return: "reply", "forward" or "resolve".
    kind: str = "reply"
    # For kind "resolve": the (name, type) the edge must ask the forwarders for.
    resolve: tuple[str, str] | None = None
    id: str = ""
    # False: TTLs are not compared (an explicit "don't care", e.g. answers from upstream).
    check_ttl: bool = True

    @property
    def ident(self) -> str:
        return self.id or f"{self.qname}|{self.qtype}"


def ids(cases: list[Case] | tuple[Case, ...]) -> list[str]:
    """pytest ids for a table of cases."""
    return [c.ident for c in cases]


def make_query(case: Case) -> dns.message.Message:
    """The query of a case, as a parsed client would send it (RD set)."""
    return dns.message.make_query(
        dns.name.from_text(case.qname), dns.rdatatype.from_text(case.qtype),
        dns.rdataclass.from_text(case.qclass), use_edns=case.edns if case.edns >= 0 else False)


def rr_lines(rrsets: list[dns.rrset.RRset], check_ttl: bool = True) -> list[str]:
    """Sorted ``owner ttl class type rdata`` lines of a section (owner case kept; TTL "*" when
    not checked)."""
    lines = []
    for rrset in rrsets:
        for rdata in rrset:
            lines.append(" ".join([rrset.name.to_text(), str(rrset.ttl) if check_ttl else "*",
                                   dns.rdataclass.to_text(rrset.rdclass),
                                   dns.rdatatype.to_text(rrset.rdtype), rdata.to_text()]))
    return sorted(lines)


def parse_lines(lines: tuple[str, ...], check_ttl: bool = True) -> list[str]:
    """Expected zone-file lines in the same canonical form as :func:`rr_lines`."""
    out = []
    for line in lines:
        owner, ttl, rdclass, rdtype, rdata = line.split(None, 4)
        rrset = dns.rrset.from_text(owner, int(ttl) if check_ttl else 0, rdclass, rdtype, rdata)
        out.extend(rr_lines([rrset], check_ttl))
    return sorted(out)


def flag_text(message: dns.message.Message) -> str:
    return " ".join(name for name, bit in _FLAG_BITS.items() if message.flags & bit)


def assert_reply(message: dns.message.Message, case: Case, payload: int | None = None) -> None:
    """Compare rcode, AA/TC/RA, EDNS presence (and payload) and every section of a reply."""
    got = {
        "rcode": dns.rcode.to_text(message.rcode()),
        "flags": flag_text(message),
        "answer": rr_lines(message.answer, case.check_ttl),
        "authority": rr_lines(message.authority, case.check_ttl),
        "additional": rr_lines(message.additional, case.check_ttl),
        "edns": message.edns,
    }
    want = {
        "rcode": case.rcode,
        "flags": " ".join(f for f in _FLAG_BITS if f in case.flags.split()),
        "answer": parse_lines(case.answer, case.check_ttl),
        "authority": parse_lines(case.authority, case.check_ttl),
        "additional": parse_lines(case.additional, case.check_ttl),
        "edns": 0 if case.edns >= 0 else -1,
    }
    assert got == want, f"{case.ident}: reply differs\n{message}"
    if payload is not None and case.edns >= 0:
        assert message.payload == payload, f"{case.ident}: EDNS payload {message.payload} != {payload}"
    assert message.flags & dns.flags.QR, f"{case.ident}: QR not set"
