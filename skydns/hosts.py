"""A hosts file (`--hosts FILE`) answered before forwarding.

parse() is PURE (text in, Table out). Hosts does the file I/O: reload() re-reads the file
only when its mtime, size or inode changed; a missing or unreadable file keeps the last good
table (logged). The forwarder calls reload() periodically.

Rules:
1. Format: `address name [alias...]`, `#` comments, blank lines; IPv4 and IPv6 addresses
   (zone suffixes like %eth0 are dropped). A bad line is skipped and logged with its number.
2. Names are case-insensitive and fully qualified. A name gets A records for its IPv4
   addresses and AAAA for its IPv6 ones, in file order, without duplicates; each address
   gets a PTR to the first name listed with it (the canonical name) and its aliases.
3. answer(query): a known name answers A/AAAA (AA set, TTL `ttl`); a known name asked for a
   type it has no records of is NODATA; a reverse name of a listed address answers PTR;
   anything else returns None (so the caller forwards it).
4. changed(old, new): the names whose answers a reload changed (the forwarder forgets their
   cached forwarded answers).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Table:
    """Parsed hosts file: name -> addresses, reverse name -> names (all lower-case FQDN text)."""

    v4: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    v6: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    ptr: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    bad_lines: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(set(self.v4) | set(self.v6))


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def parse(text: str) -> Table:
    """Parse hosts-file text (rule 1); bad lines are skipped and their numbers kept."""
    v4: dict[str, list[str]] = {}
    v6: dict[str, list[str]] = {}
    ptr: dict[str, list[str]] = {}
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            bad.append(number)
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
            names = [_fqdn(n) for n in fields[1:]]
            for name in names:
                dns.name.from_text(name)
        except ValueError:
            bad.append(number)
            continue
        except dns.exception.DNSException:
            bad.append(number)
            continue
        table = v4 if address.version == 4 else v6
        text_addr = str(address)
        for name in names:
            addrs = table.setdefault(name, [])
            if text_addr not in addrs:
                addrs.append(text_addr)
        reverse = dns.reversename.from_address(text_addr).to_text().lower()
        targets = ptr.setdefault(reverse, [])
        targets.extend(n for n in names if n not in targets)
    for number in bad:
        logger.warning("hosts: line %d is not 'address name [alias...]'; skipped", number)
    return Table(
        {k: tuple(v) for k, v in v4.items()},
        {k: tuple(v) for k, v in v6.items()},
        {k: tuple(v) for k, v in ptr.items()},
        tuple(bad),
    )


def changed(old: Table, new: Table) -> set[str]:
    """Names (lower-case FQDN text, reverse names included) whose answers differ between two
    tables: the names a reload must forget from the caches of forwarded answers."""
    out: set[str] = set()
    for before, after in ((old.v4, new.v4), (old.v6, new.v6), (old.ptr, new.ptr)):
        for name in before.keys() | after.keys():
            if before.get(name) != after.get(name):
                out.add(name)
    return out


def answer_from(table: Table, query: dns.message.Message, ttl: int) -> dns.message.Message | None:
    """Reply to query from table (rule 3), or None when the table does not know the name."""
    if len(query.question) != 1:
        return None
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return None
    name = question.name.to_text().lower()
    rdtype = question.rdtype
    if name in table.ptr:
        values = table.ptr[name] if rdtype == dns.rdatatype.PTR else ()
    elif name in table.v4 or name in table.v6:
        if rdtype == dns.rdatatype.A:
            values = table.v4.get(name, ())
        elif rdtype == dns.rdatatype.AAAA:
            values = table.v6.get(name, ())
        else:
            values = ()
    else:
        return None
    reply = dns.message.make_response(query, recursion_available=True, our_payload=1232)
    reply.flags |= dns.flags.AA
    if values:
        reply.answer.append(dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, rdtype, list(values)))
    return reply


class Hosts:
    """A hosts file on disk, re-read when it changes."""

    def __init__(self, path: str, ttl: int = 3600) -> None:
        self.path = path
        self.ttl = ttl
        self.table = Table()
        self._stamp: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the table was replaced."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return False
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            if self._stamp != (0, 0, 0):
                logger.warning("hosts: cannot read %s (%s); keeping the last %d names", self.path, exc, len(self.table))
                self._stamp = (0, 0, 0)
            return False
        self.table = parse(text)
        self._stamp = stamp
        logger.info("hosts: loaded %d names from %s", len(self.table), self.path)
        return True

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """Reply from the hosts file, or None to go on forwarding."""
        return answer_from(self.table, query, self.ttl)
