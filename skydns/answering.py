"""Answering a DNS query from the in-memory mirror: a pure function.

PURE: no I/O, no clock, no randomness. ``answer(query, view, settings)`` returns what to do:

- ``Reply(message, cacheable)``: send this message. Everything derived only from the store is
  cacheable (the edge invalidates cached answers by ``view.generation``); errors that depend on
  the packet rather than the name (FORMERR, NOTIMP, BADVERS) and SERVFAIL are not.
- ``Forward(query)``: the name is outside every served zone (or a reverse name we hold no PTR
  for); the edge forwards it, or answers SERVFAIL when it cannot.
- ``Resolve(message, name, rdtype)``: an in-zone answer whose CNAME chain leaves our zones; the
  edge appends the forwarders' answer for (name, rdtype) to ``message.answer``.

Rules (DESIGN section 3; SkyDNS semantics where DESIGN is silent):

1. Never raises on a parsed query: an unexpected error is answered SERVFAIL, with the
   exception in ``Reply.failure`` for the edge to count and log (rate-limited).
   Opcode other than QUERY -> NOTIMP; a question count other than one (or QR set) -> FORMERR;
   EDNS version > 0 -> BADVERS. The reply has an OPT record only when the query had one,
   advertising ``settings.edns_payload``. RA is set only when forwarding is possible (not
   ``no_rec`` and some upstream or stub domain configured); AA on every answer from our zones.
2. Zones: the longest of ``settings.domains`` containing the name wins. Names matched
   case-insensitively; answers whose owner is the query name use the query's own name object,
   so its spelling is kept; other owner names are lower-case.
3. Class CHAOS: TXT (or ANY) ``version.bind.``/``version.server.`` -> ``settings.version``,
   ``hostname.bind.``/``id.server.`` -> ``localhost`` (TTL 0, AA). Every other CHAOS query is
   REFUSED (SkyDNS answered SERVFAIL; REFUSED says "not here" without suggesting a failure).
   Classes other than IN and CH are REFUSED. AXFR/IXFR are REFUSED. ANY in our zones is
   answered with one ``HINFO "RFC8482" ""`` (RFC 8482) or REFUSED (``settings.any_minimal``).
4. A name answers with the records the store returns for it (subtree, ``_`` hidden below the
   name, wildcards, group), capped at ``settings.max_answers``. A name with nothing at or
   below it is NXDOMAIN; a name whose records do not fit the type is NODATA. Both carry the
   zone's SOA in authority (TTL = ``settings.negative_ttl``).
5. A/AAAA/TXT: addresses (text) of the matching family, and for the first record (in store
   order) whose host is a name and whose chain leads somewhere (text-bearing records are TXT,
   not aliases, for TXT queries): ``owner CNAME host`` plus the target's answer, chased in-zone
   from memory up to 8 CNAMEs. A name never gets two CNAMEs. A CNAME to the owner or below it
   is skipped (SRV data, not an alias), a repeated target (loop) is dropped, and a chain that
   ends in nothing is dropped entirely. A target outside our zones keeps its CNAME and the
   reply becomes a Resolve for that target; its ``fallback`` (sent when the forwarders have
   no answer) leaves that chain out, as SkyDNS and CoreDNS do when the upstream lookup fails.
6. CNAME: the first record (in store order) whose host is a name not at or below the query
   name, not chased (SkyDNS). Every other type not listed here (HINFO, CAA, DS, ...): only a
   name that is a pure alias (all its records have name hosts and no text) answers, with its
   CNAME chain chased as in rule 5; any other name is NODATA.
7. SRV: one per record with a host; priority 0 -> ``settings.default_priority``; weight 0 counts
   as 100 and the weight is floor(100 * w / sum of w in the same priority), at least 1. A name
   host is the target; an IP host gets the name of its key; ``targetstrip`` applies to both.
   Additional: A/AAAA glue for IP hosts, and the in-zone A/AAAA (with CNAMEs) of name targets.
   MX: the same for records with ``mail`` true (preference = priority).
8. PTR: for complete reverse names (in-addr.arpa with 4 octets, ip6.arpa with 32 nibbles) the
   records under ``/<prefix>/arpa/...`` with name hosts, always authoritative (our own data,
   as the stock Corefile serves ``in-addr.arpa ip6.arpa`` with fallthrough); nothing held ->
   Forward unless the reverse zone is one of ``settings.domains``. Forward names: records at
   exactly the name.
9. Zone apex: SOA ``ns.dns.<zone>. hostmaster.<zone>. <view.revision> 7200 1800 86400 <negative
   ttl>`` (TTL negative ttl); NS from the records under ``ns.dns.<zone>`` (an IP host names the
   server by its key, with glue) or ``ns.dns.<zone>.`` when none is stored; A/AAAA from
   ``apex.dns.<zone>`` when that name has records, else as any other name. SOA and NS elsewhere
   are NODATA. An apex is never NXDOMAIN, even in an empty zone.
10. ``settings.pods == "insecure"``: ``a-b-c-d.<ns>.pod.<zone>`` (or the dashed IPv6 form) with
    nothing stored answers A/AAAA parsed from the name; any namespace. TTL ``settings.pods_ttl``
    (30, kube2sky's record TTL: cluster answers share one TTL).
11. Before the store's first load, names in our zones get SERVFAIL (not cacheable).
12. Identical records are answered once; an RRset has one TTL (the smallest of its records).
    Address answers are not shuffled here (a pure function); the edge may rotate them.
13. Kubernetes names win over SkyDNS aggregation in the zones kube2sky lays out. A zone is one
    when it holds ``dns-version.<zone>`` (kube2sky always writes it; hand-written zones do
    not, and keep rules 4-7 exactly, as the CoreDNS etcd plugin reads them). There:
    13a. The apex, ``svc``, ``pod``, ``<ns>.svc``, ``<ns>.pod`` and a legacy namespace name
         ``<ns>.<zone>`` (when ``<ns>.svc.<zone>`` exists) answer only records stored at exactly
         their own key, never their subtree: such a name exists (NODATA with the SOA) but holds
         no addresses, so a short name equal to a namespace falls through the search list.
         ``svc`` and ``pod`` exist even when empty, ``<ns>.pod`` when ``<ns>.svc`` does.
         (The apex still answers A/AAAA from ``apex.dns.<zone>``, rule 9.)
    13b. A name that holds SRV data (a first label starting with ``_``, or any record with a
         port) never answers with a CNAME: a caching resolver in front would serve SRV queries
         from it. A/AAAA there are the in-zone addresses of its SRV targets (CoreDNS answers the
         service's addresses). SRV answers only come from records with a port (MX from records
         with ``mail``), and SRV at a service name ``<svc>.<ns>.svc.<zone>`` answers the SRV
         records kube2sky keeps under ``_<proto>._<port>.<svc>...`` (one per named port, or per
         endpoint and port for a headless service), glue in additional.
    13c. A pure alias name (ExternalName, the legacy ``<svc>.<ns>.<zone>`` name) is a CNAME for
         every type but CNAME/PTR/NS/SOA: the CNAME is sent followed by whatever its target has
         for the type, and stays when the target has nothing (the spec: the CNAME exists).
    13d. NS at the apex names one server, ``ns.dns.<zone>.`` (the SOA's MNAME), glued with the
         addresses stored under that name.
14. CNAME queries answer the alias stored at exactly the name first, whatever its target
    (the CoreDNS etcd plugin's exact lookup: the target may lie below the name); without one,
    the first alias of the subtree that does not point into the name itself (rule 6).
15. Kept work for big SRV/MX answers (speed only: the plan is the one the plain steps make).
    What ``_choose`` makes of a list of records is kept by the records' identities (the store
    hands out the same objects until a record changes, store rules 13-14), with the answer
    RRset ``Section.extend`` would build of its items. The address glue of a headless
    service's targets (``_address_glue``: one IPv4 record per child of the service name) is
    kept per targets and service name with the read it came from; when a later read holds the
    same records but a few (new values at the same keys), only the targets of those are built
    again. ``Section.adopt`` takes such kept RRsets whole (a later ``add``/``extend`` works on
    copies), so plans share them, and no list of a plan is ever changed once ``plan`` returns
    it: encode keeps what it wrote of them by identity (encode rule 7). The same for the A/AAAA
    answer of a name whose records are all addresses of the family asked (``_addresses``, a
    headless service's name): kept per name with the records it came from, and after a change
    only the records that changed are read again. Each kept table holds at most 8,192 records
    and is emptied when full.
    tests/skydns/test_answering_fast.py and test_headless_diff.py compare with nothing kept.
16. A plan is a function of what it read (anscache rule 1), of the question and of the
    settings. So a plan of an A or AAAA question whose only record is one address record at
    the query name can be redone from a log of its reads (``replay``): every read is made
    again; when each returns what it returned before, the plan is the same; when the only
    reads that differ are those of the name's records and they hold one record again, equal
    to the old one but for ``host`` and ``ttl`` (the same key, an address of the same family),
    the plan takes the same steps (the steps read a record's host only through its family,
    rule 5, and its TTL only into the answer): a lone address of the family asked becomes the
    new address with the new TTL, and an answer without records of the record's family
    (NODATA) stays the same. Anything else is planned again. tests/skydns/test_answering_fast.py
    compares replays with fresh plans.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import logging
import operator
import re

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from skydns import kept as kept_mod, msg, rrs, settings as settings_mod, store, wire

logger = logging.getLogger(__name__)

# Longest CNAME chain followed from memory (SkyDNS: 8).
MAX_CHAIN = 8
_IN = dns.rdataclass.IN
_CH = dns.rdataclass.CH
_A, _AAAA, _CNAME = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME
_SRV, _MX, _TXT, _PTR = dns.rdatatype.SRV, dns.rdatatype.MX, dns.rdatatype.TXT, dns.rdatatype.PTR
_NS, _SOA, _ANY = dns.rdatatype.NS, dns.rdatatype.SOA, dns.rdatatype.ANY
_HINFO = dns.rdatatype.HINFO
_AXFR, _IXFR = dns.rdatatype.AXFR, dns.rdatatype.IXFR
_ADDRESS = {_A: msg.HostType.IPV4, _AAAA: msg.HostType.IPV6}
_CHAOS_TEXT = {"hostname.bind.": "localhost", "id.server.": "localhost"}
_CHAOS_VERSION = frozenset({"version.bind.", "version.server."})
# Second-level labels of a kube2sky zone that hold namespaces (rule 13a).
_KUBE_TOPS = frozenset({"svc", "pod"})
_NOERROR, _NXDOMAIN, _SERVFAIL, _REFUSED = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL,
                                            dns.rcode.REFUSED)


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """Send ``message``; ``cacheable`` says whether the edge may reuse its encoded bytes.

    ``failure`` is the exception behind a SERVFAIL that answering itself caused (rule 1); the
    edge counts it as a panic and logs it, rate-limited.
    """

    message: dns.message.Message
    cacheable: bool = True
    failure: BaseException | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """The name is not ours: forward the query upstream (or SERVFAIL when that is impossible)."""

    query: dns.message.Message


@dataclasses.dataclass(frozen=True, slots=True)
class Resolve:
    """Append the forwarders' answer for (name, rdtype) to ``message.answer``, then send it.

    When the forwarders give nothing (failure, or no forwarding), send ``fallback`` instead:
    the same answer without the CNAME chain that leaves our zones (NODATA if nothing remains).
    """

    message: dns.message.Message
    name: str
    rdtype: int
    fallback: dns.message.Message | None = None


# -- plans: an answer as plain values, before any dnspython object or wire byte ---------------

# Section.extend adds many items for new RRsets a whole RRset at a time (tests/skydns/
# test_answering_fast.py turns it off to compare).
_BULK = True
_BULK_MIN = 8
_HEAD = operator.itemgetter(0, 1)
_OWNER = operator.itemgetter(0)
_TYPE_AT = operator.itemgetter(1)
_TTL = operator.itemgetter(2)
_RDATA = operator.itemgetter(3)
_HOST = operator.attrgetter("host")
_TTL_OF = operator.attrgetter("ttl")
_KEY = operator.attrgetter("key")
_GROUP_OF = operator.attrgetter("group")
_NAME_KIND = msg.HostType.NAME
_IPV4_KIND = msg.HostType.IPV4
_NONE_TYPE = type(None)


class Section:
    """Ordered RRsets of one section, as plain values, with de-duplication and an RR cap.

    An RRset is ``[display, owner, rdtype, ttl, rdatas]``: ``owner`` the lower-case name text,
    ``display`` None when the owner is the query name (it keeps the query's spelling) else the
    owner text; ``ttl`` the smallest TTL added (also by duplicates, as dnspython counts it);
    ``rdatas`` plain rdata values in the order added (see ``rdata_of``); a CNAME RRset holds one,
    the last added (``_realias``). Equal names compare equal whatever their letter case, as in
    DNS.
    """

    __slots__ = ("sets", "count", "limit", "_seen", "_kept")

    def __init__(self, limit: int) -> None:
        self.sets: dict[tuple[str, int], list] = {}
        self._seen: dict[tuple[str, int], set] = {}
        self.count = 0
        self.limit = limit
        self._kept: list[list] | None = None  # RRsets adopted whole (``adopt``), shared

    def adopt(self, rrsets: list[list], count: int) -> None:
        """Take ``rrsets`` (``count`` records in all) as the whole section, as ``extend`` would
        have built them from their records (rule 15): kept RRsets are shared, never changed; a
        later ``add`` or ``extend`` works on copies."""
        if self.sets or self._kept is not None:
            raise ValueError("adopt() needs an empty section")
        self._kept = rrsets
        self.count = count

    def _unshare(self) -> None:
        """Copies of the adopted RRsets as the section's own (before a change)."""
        kept, self._kept = self._kept, None
        for owner, key, rdtype, ttl, rdatas in kept:  # type: ignore[union-attr]
            self.sets[(key, rdtype)] = [owner, key, rdtype, ttl, list(rdatas)]
            self._seen[(key, rdtype)] = set(rdatas)

    def add(self, owner: str | None, qtext: str, rdtype: int, ttl: int, rdata: object) -> None:
        """Add one record; ``owner`` None is the query name, whose lower-case text is ``qtext``."""
        if self.count >= self.limit:
            return
        if self._kept is not None:
            self._unshare()
        key = (qtext if owner is None else owner, rdtype)
        rrset = self.sets.get(key)
        if rrset is None:
            self.sets[key] = [owner, key[0], rdtype, ttl, [rdata]]
            self._seen[key] = {rdata}
            self.count += 1
            return
        if ttl < rrset[3]:
            rrset[3] = ttl
        seen = self._seen[key]
        if rdata not in seen:
            if rdtype == _CNAME:
                self._realias(key, rdata)
                return
            seen.add(rdata)
            rrset[4].append(rdata)
            self.count += 1

    def _realias(self, key: tuple[str, int], rdata: object) -> None:
        """A second CNAME of one owner (the glue of A and AAAA can each follow another alias)
        replaces the first, as dnspython's singleton rule does in the reference rendering: a
        name has one CNAME, the last one added, with the smallest TTL of them."""
        self._seen[key] = {rdata}
        self.sets[key][4] = [rdata]

    def extend(self, items: list[tuple], qtext: str) -> None:
        """``add`` of each ``(owner, rdtype, ttl, rdata)`` in turn (the same steps, inline).

        Many items for new RRsets that stay under the cap (a big address answer, the glue of
        many targets) are added a whole RRset at a time: the same RRsets, TTLs and order."""
        if self._kept is not None:
            self._unshare()
        count, limit = self.count, self.limit
        sets, seen_sets = self.sets, self._seen
        if _BULK and len(items) >= _BULK_MIN and count + len(items) <= limit:
            heads = list(map(_HEAD, items))
            distinct = dict.fromkeys(heads)
            if len(distinct) == 1:
                # one RRset (a big address or SRV answer); the query name may own it
                owner, rdtype = heads[0]
                key = (qtext if owner is None else owner, rdtype)
                if key not in sets and rdtype != _CNAME:
                    rdatas = dict.fromkeys(map(_RDATA, items))
                    sets[key] = [owner, key[0], rdtype, min(map(_TTL, items)), list(rdatas)]
                    seen_sets[key] = set(rdatas)
                    self.count = count + len(rdatas)
                    return
            elif (len(distinct) == len(heads) and None not in map(_OWNER, heads)
                  and sets.keys().isdisjoint(heads)):
                # one record per new RRset (the glue of many targets), none owned by the query name:
                # [owner, owner, rdtype, ttl, [rdata]] and {rdata} per item
                owners = list(map(_OWNER, items))
                sets.update(zip(heads, map(list, zip(owners, owners, map(_TYPE_AT, items), map(_TTL, items),
                                                     map(list, zip(map(_RDATA, items)))))))
                seen_sets.update(zip(heads, map(set, zip(map(_RDATA, items)))))
                self.count = count + len(items)
                return
        for owner, rdtype, ttl, rdata in items:
            if count >= limit:
                break
            key = (qtext if owner is None else owner, rdtype)
            rrset = sets.get(key)
            if rrset is None:
                sets[key] = [owner, key[0], rdtype, ttl, [rdata]]
                seen_sets[key] = {rdata}
                count += 1
                continue
            if ttl < rrset[3]:
                rrset[3] = ttl
            seen = seen_sets[key]
            if rdata not in seen:
                if rdtype == _CNAME:
                    self._realias(key, rdata)
                    continue
                seen.add(rdata)
                rrset[4].append(rdata)
                count += 1
        self.count = count

    def rrsets(self) -> list[list]:
        if self._kept is not None:
            return self._kept  # never changed (rule 15)
        return list(self.sets.values())


@dataclasses.dataclass(slots=True)
class Plan:
    """A reply from our zones as plain values: what both renderers (dnspython for the reference
    path, ``encode`` for the fast path) turn into a message for one query."""

    rcode: int = _NOERROR
    aa: bool = True
    answer: list = dataclasses.field(default_factory=list)
    authority: list = dataclasses.field(default_factory=list)
    additional: list = dataclasses.field(default_factory=list)
    cacheable: bool = True


@dataclasses.dataclass(slots=True)
class ResolvePlan:
    """An answer whose CNAME chain leaves our zones: ``plan`` plus the forwarders' answer for
    (name, rdtype), or ``fallback`` when they have nothing."""

    plan: Plan
    name: str
    rdtype: int
    fallback: Plan


FORWARD = "forward"  # the plan of a name that is not ours


@dataclasses.dataclass(frozen=True, slots=True)
class _Zone:
    """A served zone, precomputed once per Settings."""

    name: str                      # lower-case, fully qualified
    path: tuple[str, ...]          # key segments below the prefix ("local", "cluster")
    ns_path: tuple[str, ...]       # ns.dns.<zone>
    apex_path: tuple[str, ...]     # apex.dns.<zone>
    default_ns: str                # ns.dns.<zone>.
    version_path: tuple[str, ...]  # dns-version.<zone>: kube2sky's mark (rule 13)


@functools.lru_cache(maxsize=16)
def _zones(domains: tuple[str, ...]) -> tuple[_Zone, ...]:
    zones = []
    for domain in domains:
        try:
            labels = msg.labels(domain)
        except msg.PathError:
            logger.error("ignoring bad zone %r", domain)
            continue
        path = tuple(reversed(labels))
        name = msg.normalize(domain)
        zones.append(_Zone(
            name=name,
            path=path,
            ns_path=path + ("dns", "ns"),
            apex_path=path + ("dns", "apex"),
            default_ns="ns.dns." + name if name != "." else "ns.dns.",
            version_path=path + ("dns-version",),
        ))
    zones.sort(key=lambda z: len(z.path), reverse=True)
    return tuple(zones)


def _zone_of(path: tuple[str, ...], zones: tuple[_Zone, ...]) -> _Zone | None:
    for zone in zones:
        if path[:len(zone.path)] == zone.path:
            return zone
    return None


def _path_of(name: dns.name.Name) -> tuple[str, ...]:
    """Lower-case key segments of a name (labels reversed, root dropped)."""
    labels = name.labels
    if labels and labels[-1] == b"":
        labels = labels[:-1]
    return tuple(label.lower().decode("latin-1") for label in reversed(labels))


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _text_path(text: str) -> tuple[str, ...] | None:
    try:
        return tuple(reversed(msg.labels(text)))
    except msg.PathError:
        return None


# Plain IPv4 addresses (msg.IPV4_TEXT), one per line (_all_addresses).
_IPV4_LINES = re.compile(f"(?:{msg.IPV4_TEXT.pattern}\n)*{msg.IPV4_TEXT.pattern}")


def _plain_ipv4(host: str) -> bool:
    """Whether host is an IPv4 address written as ``ipaddress`` writes it: four decimal octets
    without leading zeros, none above 255 (``ipaddress`` accepts exactly these, and its text of
    such an address is the host itself). A quick test: the first change of a pod address
    otherwise costs two ``ipaddress`` parses on the miss that follows it."""
    return msg.IPV4_TEXT.fullmatch(host) is not None


# Memoised helpers: records are immutable, so a miss reuses the checked forms of hosts seen
# before (bounded caches; still no I/O).
@functools.lru_cache(maxsize=kept_mod.VALUES)
def _kind(host: str) -> msg.HostType:
    """msg.host_type, with plain IPv4 addresses recognised without ``ipaddress``."""
    if host[:1].isdigit() and _plain_ipv4(host):
        return msg.HostType.IPV4
    return msg.host_type(host)


@functools.lru_cache(maxsize=kept_mod.VALUES)
def _ip(host: str) -> str:
    """The canonical text of an address host (the plain rdata of A/AAAA: equal addresses are
    equal however they were written)."""
    if _plain_ipv4(host):
        return host
    return str(ipaddress.ip_address(host))


@functools.lru_cache(maxsize=kept_mod.VALUES)
def _valid_name(text: str) -> bool:
    """Whether a host/target from a record is a valid absolute DNS name (what ``rrs.name``
    accepts). Plain ASCII without escapes is checked here, as dnspython would check it: every
    label 1-63 bytes (the root's empty one last), at most 255 bytes on the wire; anything else
    is left to dnspython (a cold SRV answer of 100 targets spent a third of its time there)."""
    if text.isascii() and "\\" not in text and text != "@":
        if text == "." or not text:
            return True
        labels = text.split(".")
        if not labels[-1]:
            labels.pop()
        return (len(text) + (1 if text[-1] == "." else 2) <= wire.MAX_NAME and "" not in labels
                and max(map(len, labels)) <= wire.MAX_LABEL)
    try:
        rrs.name(text)
        return True
    except dns.exception.DNSException:
        return False


def _is_reverse_path(path: tuple[str, ...]) -> bool:
    return path[:2] in (("arpa", "in-addr"), ("arpa", "ip6"))


def _complete_reverse(path: tuple[str, ...]) -> bool:
    head = path[:2]
    return (head == ("arpa", "in-addr") and len(path) == 6) or (head == ("arpa", "ip6") and len(path) == 34)


# The glue of a target whose records are all addresses is built without _chase (the same
# result; tests/skydns/test_answering_fast.py turns it off to compare).
_GLUE_ADDRESSES = True
# The glue of many SRV/MX targets below one name is read with one find of that name
# (``_batched``; tests/skydns/test_answering_fast.py turns it off to compare).
_BATCH_GLUE = True
_BATCH_MIN = 4
_WILDCARDS = msg.WILDCARDS

# (owner, rdtype, ttl, rdata) of one answer RR; owner None is the query name.
_RR = tuple[str | None, int, int, object]


class _Ctx:
    """What one plan needs everywhere."""

    __slots__ = ("view", "settings", "zones", "limit", "qtext", "kube", "path")

    def __init__(self, view: store.Store, settings: settings_mod.Settings,
                 zones: tuple[_Zone, ...], qtext: str, path: tuple[str, ...] = ()) -> None:
        self.view = view
        self.settings = settings
        self.zones = zones
        self.limit = max(1, settings.max_answers)
        self.qtext = qtext
        self.path = path  # the query name's path
        self.kube: dict[str, bool] = {}  # zone name -> laid out by kube2sky (read once per plan)


def answer(query: dns.message.Message, view: store.Store,
           settings: settings_mod.Settings) -> Reply | Forward | Resolve:
    """Answer one parsed query from the store (see the module rules)."""
    try:
        return _answer(query, view, settings)
    except Exception as exc:  # rule 1: one bad case must never take the server down
        logger.debug("answering %s failed", _describe(query), exc_info=True)
        try:
            return Reply(_skeleton(query, settings, rcode=_SERVFAIL), cacheable=False, failure=exc)
        except Exception:
            resp = dns.message.Message(id=getattr(query, "id", 0))
            resp.flags = dns.flags.QR
            resp.set_rcode(_SERVFAIL)
            return Reply(resp, cacheable=False, failure=exc)


def _describe(query: dns.message.Message) -> str:
    try:
        q = query.question[0]
        return f"{q.name} {dns.rdatatype.to_text(q.rdtype)}"
    except Exception:
        return f"query id {getattr(query, 'id', '?')}"


def can_forward(settings: settings_mod.Settings) -> bool:
    """Whether a name outside our zones can be forwarded at all (RA, rule 1)."""
    return not settings.no_rec and bool(settings.nameservers or settings.stub_domains)


def _skeleton(query: dns.message.Message, settings: settings_mod.Settings, aa: bool = False,
              rcode: int = _NOERROR) -> dns.message.Message:
    """A reply with the question copied, QR/RD/RA/AA flags, and OPT when the query had one
    (with the query's DO bit copied, RFC 3225)."""
    resp = dns.message.Message(id=query.id)
    flags = dns.flags.QR | (query.flags & dns.flags.RD)
    if can_forward(settings):
        flags |= dns.flags.RA
    if aa:
        flags |= dns.flags.AA
    resp.flags = flags
    resp.set_opcode(query.opcode())
    resp.question = list(query.question)
    if query.edns >= 0:
        resp.use_edns(0, query.ednsflags & dns.flags.DO, settings.edns_payload, query.payload)
    if rcode:
        resp.set_rcode(rcode)
    return resp


def _answer(query: dns.message.Message, view: store.Store,
            settings: settings_mod.Settings) -> Reply | Forward | Resolve:
    if query.opcode() != dns.opcode.QUERY:
        return Reply(_skeleton(query, settings, rcode=dns.rcode.NOTIMP), cacheable=False)
    if len(query.question) != 1 or query.flags & dns.flags.QR:
        return Reply(_skeleton(query, settings, rcode=dns.rcode.FORMERR), cacheable=False)
    if query.edns > 0:
        return Reply(_skeleton(query, settings, rcode=dns.rcode.BADVERS), cacheable=False)
    question = query.question[0]
    qname, qtype, qclass = question.name, question.rdtype, question.rdclass
    if qclass == _CH:
        return _chaos(query, qname, qtype, settings)
    result = plan(_path_of(qname), qtype, qclass, view, settings)
    if result is FORWARD:
        return Forward(query)
    if isinstance(result, ResolvePlan):
        return Resolve(to_message(query, result.plan, settings), result.name, result.rdtype,
                       to_message(query, result.fallback, settings))
    return Reply(to_message(query, result, settings), cacheable=result.cacheable)  # type: ignore[arg-type]


def plan(path: tuple[str, ...], qtype: int, qclass: int, view: store.Store,
         settings: settings_mod.Settings) -> Plan | ResolvePlan | str:
    """The answer for a class IN (or other non-CHAOS) question, as plain values.

    ``path`` is the query name's lower-case labels reversed. Returns a Plan, a ResolvePlan, or
    FORWARD. The single source of the answer semantics: answer() renders it with dnspython,
    the transport's fast path with ``encode``.
    """
    if qclass != _IN or qtype in (_AXFR, _IXFR):
        return Plan(rcode=_REFUSED, aa=False)
    qtext = ".".join(reversed(path)) + "." if path else "."
    ctx = _Ctx(view, settings, _zones(settings.domains), qtext, path)
    zone = _zone_of(path, ctx.zones)
    if zone is None:
        if qtype == _PTR and _complete_reverse(path) and view.loaded:
            records = _ptr_records(ctx, path, reverse=True)
            if records:
                # Our own records: authoritative, like the stock Corefile's reverse zones served
                # by the kubernetes plugin with fallthrough (rule 8).
                section = Section(ctx.limit)
                for rec in records:
                    if _kind(rec.host) is msg.HostType.NAME:
                        target = msg.normalize(rec.host)
                        if _valid_name(target):
                            section.add(None, qtext, _PTR, rrs.ttl(rec, settings), target)
                if section.count:
                    return Plan(answer=section.rrsets())
        return FORWARD
    if not view.loaded:
        return Plan(rcode=_SERVFAIL, aa=False, cacheable=False)
    return _in_zone(ctx, qtype, path, zone)


# replay's outcomes (rule 16)
SAME = "same"
_SAME_BUT_ADDRESS = operator.attrgetter("port", "priority", "weight", "text", "mail", "targetstrip", "group", "key")
_LOG_FIND, _LOG_EXISTS, _LOG_CHILDREN = 0, 1, 2


def replayable(path: tuple[str, ...], qtype: int, result: object, log: list[tuple],
               settings: settings_mod.Settings) -> tuple | None:
    """What ``replay`` needs to redo ``result``, the plan of an A/AAAA question of ``path``
    made with the reads of ``log`` (anscache ``Reads.log``), or None when rule 16 does not
    apply: ``(log, qtype, the name's record, lone, path)`` with ``lone`` true when the plan's only
    record is that record's address."""
    if qtype not in _ADDRESS or not isinstance(result, Plan) or result.rcode != _NOERROR or result.additional:
        return None
    record = None
    for kind, segments, exact, _, got in log:
        if kind == _LOG_FIND and segments == path and not exact:
            if len(got) != 1 or (record is not None and got[0] is not record):
                return None
            record = got[0]
    if record is None:
        return None
    # the name's records first: replay stops at once when they are gone or more
    log = sorted(log, key=lambda item: not (item[0] == _LOG_FIND and item[1] == path and not item[2]))
    family = _kind(record.host)
    if family is not _IPV4_KIND and family is not msg.HostType.IPV6:
        return None
    if not result.answer:
        if family is _ADDRESS[qtype] or len(result.authority) != 1:
            return None
        return (log, qtype, record, False, path)
    if family is not _ADDRESS[qtype] or result.authority or len(result.answer) != 1:
        return None
    display, _, rdtype, ttl, rdatas = result.answer[0]
    if (display is not None or rdtype != qtype or rdatas != [_ip(record.host)]
            or ttl != (record.ttl or settings.ttl)):
        return None
    return (log, qtype, record, True, path)


def replay(recipe: tuple, view: store.Store, settings: settings_mod.Settings) -> tuple | None:
    """The plan of ``recipe`` (``replayable``) for the store as it is now (rule 16), as
    ``(SAME or (ttl, address), the new recipe)``; None when it must be planned again."""
    log, qtype, record, lone, path = recipe
    if not view.loaded:
        return None
    new = None
    for kind, segments, exact, limit, got in log:  # the name's records first (replayable)
        if kind == _LOG_FIND:
            now = view.find(segments, exact, limit)
            if segments == path and not exact:  # it gave [record]
                if len(now) != 1:
                    return None
                if now[0] is not record:
                    if new is None:
                        new = now[0]
                        if (_SAME_BUT_ADDRESS(new) != _SAME_BUT_ADDRESS(record)
                                or _kind(new.host) is not _kind(record.host)):
                            return None
                    elif now[0] is not new:
                        return None
            elif len(now) != len(got) or not all(map(operator.is_, now, got)):
                return None
        elif kind == _LOG_EXISTS:
            if view.exists_path(segments) != got:
                return None
        elif view.children(segments) != got:
            return None
    if new is None:
        return SAME, recipe
    recipe = ([(kind, segments, exact, limit, [new]) if kind == _LOG_FIND and segments == path and not exact
               else (kind, segments, exact, limit, got) for kind, segments, exact, limit, got in log],
              qtype, new, lone, path)
    if not lone:
        return SAME, recipe
    return (new.ttl or settings.ttl, _ip(new.host)), recipe


def _chaos(query: dns.message.Message, qname: dns.name.Name, qtype: int,
           settings: settings_mod.Settings) -> Reply:
    text = qname.to_text().lower()
    if qtype in (_TXT, _ANY) and (text in _CHAOS_VERSION or text in _CHAOS_TEXT):
        value = settings.version if text in _CHAOS_VERSION else _CHAOS_TEXT[text]
        resp = _skeleton(query, settings, aa=True)
        rrset = dns.rrset.RRset(qname, _CH, _TXT)
        rrset.add(rrs.txt(value, _CH), 0)
        resp.answer = [rrset]
        return Reply(resp)
    return Reply(_skeleton(query, settings, rcode=_REFUSED))


def _soa_rr(ctx: _Ctx, zone: _Zone, owner: str | None) -> list:
    """The zone's SOA RRset (rule 9) with owner ``owner`` (None: the query name)."""
    settings = ctx.settings
    if settings.hostmaster:
        rname = settings.hostmaster.replace("@", ".")
        rname = rname if rname.endswith(".") else rname + "."
    else:
        rname = "hostmaster." + zone.name if zone.name != "." else "hostmaster."
    soa = (zone.default_ns, rname, ctx.view.revision & 0xFFFFFFFF, rrs.SOA_REFRESH, rrs.SOA_RETRY,
           rrs.SOA_EXPIRE, settings.negative_ttl)
    return [owner, zone.name if owner is not None else ctx.qtext, _SOA, settings.negative_ttl, [soa]]


def _negative(ctx: _Ctx, zone: _Zone, exists: bool) -> Plan:
    """NODATA (the name exists) or NXDOMAIN, with the zone's SOA in authority."""
    return Plan(rcode=_NOERROR if exists else _NXDOMAIN, authority=[_soa_rr(ctx, zone, zone.name)])


def _in_zone(ctx: _Ctx, qtype: int, path: tuple[str, ...], zone: _Zone) -> Plan | ResolvePlan:
    settings = ctx.settings
    qtext = ctx.qtext
    apex = len(path) == len(zone.path)
    if apex and qtype == _SOA:
        return Plan(answer=[_soa_rr(ctx, zone, None)])
    if apex and qtype == _NS:
        return _ns(ctx, zone)
    if qtype == _ANY:
        if not settings.any_minimal:
            return Plan(rcode=_REFUSED, aa=False)
        if not (apex or ctx.view.exists_path(path) or _records_for(ctx, path, zone, _A)):
            return _negative(ctx, zone, exists=False)
        return Plan(answer=[[None, qtext, _HINFO, settings.ttl, [(b"RFC8482", b"")]]])

    kube = _is_kube(ctx, zone)
    own: list[msg.Service] = []  # CNAME queries: the aliases at exactly the name
    if qtype == _PTR:
        records = _ptr_records(ctx, path, reverse=_is_reverse_path(path))
    elif qtype == _CNAME:
        # rule 14: the record at exactly the name first (its target may lie below it)
        records = ctx.view.find(path, exact=True, limit=ctx.limit)
        own = [rec for rec in records if _kind(rec.host) is msg.HostType.NAME]
        records = own or _records_for(ctx, path, zone, qtype)
    else:
        records = _records_for(ctx, path, zone, qtype)
    answer = Section(ctx.limit)
    additional = Section(ctx.limit)
    resolve: tuple[str, int] | None = None
    srv_name = kube and _holds_srv(path, records)
    # rule 13c: an alias name of a kube2sky zone (ExternalName, legacy name) is a CNAME for
    # every type, kept even when its target has nothing of that type
    alias = (kube and not srv_name and qtype not in (_CNAME, _PTR, _NS, _SOA) and bool(records)
             and _pure_alias(records))

    if alias:
        items, resolve = _chase(ctx, None, qtext, records, qtype, frozenset((qtext,)), 0, keep=True)
        answer.extend(items, qtext)
    elif srv_name and qtype in _ADDRESS:
        answer.extend(_target_addresses(ctx, records, qtype), qtext)
    elif qtype in (_A, _AAAA, _TXT) and records:  # none: no branch below, the negative answer
        kept = (_addresses(qtext, qtype, records, settings.ttl)
                if len(records) >= _BULK_MIN and qtype != _TXT and _MEMO_ADDRESSES and _BULK
                and len(records) <= answer.limit else None)
        if kept is not None:
            # rule 15: the one RRset extend makes of _chase's addresses, kept per name
            answer.adopt([[None, qtext, qtype, kept[3], kept[4]]], len(kept[4]))
        else:
            items, resolve = _chase(ctx, None, qtext, records, qtype, frozenset((qtext,)), 0,
                                    aliases=not srv_name)
            answer.extend(items, qtext)
    elif qtype in (_SRV, _MX):
        if kube:  # rule 13b: only SRV data (a port) makes SRV answers; mail makes MX answers
            records = [rec for rec in records if (rec.port if qtype == _SRV else rec.mail)]
        _targets(ctx, records, qtype, answer, additional)
    elif qtype == _PTR:
        for rec in records:
            if _kind(rec.host) is msg.HostType.NAME:
                target = msg.normalize(rec.host)
                if _valid_name(target):
                    answer.add(None, qtext, _PTR, rrs.ttl(rec, settings), target)
    elif qtype == _CNAME:
        for rec in records:
            if _kind(rec.host) is not msg.HostType.NAME:
                continue
            target = msg.normalize(rec.host)
            if _valid_name(target) and (rec in own or not _below(target, qtext)):
                answer.add(None, qtext, _CNAME, rrs.ttl(rec, settings), target)
                break
    elif qtype not in (_NS, _SOA) and records and _pure_alias(records) and not srv_name:
        items, resolve = _chase(ctx, None, qtext, records, qtype, frozenset((qtext,)), 0)
        answer.extend(items, qtext)

    if not answer.count:
        exists = (apex or bool(records) or ctx.view.exists_path(path)
                  or (kube and _always_exists(ctx, path, zone)))
        return _negative(ctx, zone, exists)
    result = Plan(answer=answer.rrsets(), additional=additional.rrsets())
    if resolve is None:
        return result
    if alias:
        # rule 13c: the CNAME exists whatever the target has; nothing more to add
        return ResolvePlan(result, resolve[0], resolve[1], Plan(answer=answer.rrsets()))
    # What to send when the forwarders have nothing for the target: the answer without
    # chains that leave our zones (SkyDNS and CoreDNS drop such a CNAME), else NODATA.
    items, _ = _chase(ctx, None, qtext, records, qtype, frozenset((qtext,)), 0, external=False)
    if items:
        inner = Section(ctx.limit)
        inner.extend(items, qtext)
        fallback = Plan(answer=inner.rrsets())
    else:
        fallback = _negative(ctx, zone, exists=True)
    return ResolvePlan(result, resolve[0], resolve[1], fallback)


def _is_kube(ctx: _Ctx, zone: _Zone) -> bool:
    """Whether kube2sky lays out this zone: it holds ``dns-version.<zone>`` (rule 13)."""
    kube = ctx.kube.get(zone.name)
    if kube is None:
        kube = ctx.kube[zone.name] = ctx.view.exists_path(zone.version_path)
    return kube


def _structural(ctx: _Ctx, path: tuple[str, ...], zone: _Zone) -> bool:
    """A name above the services of a kube2sky zone (rule 13a): the apex, ``svc``, ``pod``,
    ``<ns>.svc``, ``<ns>.pod`` and a legacy namespace name ``<ns>`` (when ``<ns>.svc`` exists)."""
    rel = path[len(zone.path):]
    if len(rel) == 0:
        return True
    if rel[0] in _KUBE_TOPS and len(rel) <= 2:
        return True
    return len(rel) == 1 and ctx.view.exists_path(zone.path + ("svc", rel[0]))


def _always_exists(ctx: _Ctx, path: tuple[str, ...], zone: _Zone) -> bool:
    """``svc.<zone>`` and ``pod.<zone>`` exist in a kube2sky zone even when empty, and so does
    ``<ns>.pod.<zone>`` for a namespace that has services (rule 13a, the spec and CoreDNS)."""
    rel = path[len(zone.path):]
    if len(rel) == 1:
        return rel[0] in _KUBE_TOPS
    return len(rel) == 2 and rel[0] == "pod" and ctx.view.exists_path(zone.path + ("svc", rel[1]))


def _holds_srv(path: tuple[str, ...], records: list[msg.Service]) -> bool:
    """Whether a name holds SRV data: a ``_`` first label or any record with a port (rule 13b)."""
    if path and path[-1][:1] == "_":
        return True
    return any(rec.port for rec in records)


def _service_srv(ctx: _Ctx, path: tuple[str, ...]) -> list[msg.Service]:
    """The SRV records of a service name: those kube2sky keeps under ``_<proto>/_<port>``."""
    view = ctx.view
    found: list[msg.Service] = []
    for proto in view.children(path):
        if proto[:1] != "_":
            continue
        for port in view.children(path + (proto,)):
            if port[:1] == "_":
                found.extend(rec for rec in view.find(path + (proto, port), limit=ctx.limit) if rec.port)
    return found[:ctx.limit]


def _target_addresses(ctx: _Ctx, records: list[msg.Service], qtype: int) -> list[_RR]:
    """A/AAAA of an SRV name: the in-zone addresses of its targets, owned by the name itself,
    never a CNAME (rule 13b)."""
    want = _ADDRESS[qtype]
    out: list[_RR] = []
    settings = ctx.settings
    for rec in records:
        kind = _kind(rec.host)
        if kind is want:
            out.append((None, qtype, rrs.ttl(rec, settings), _ip(rec.host)))
            continue
        if kind is not msg.HostType.NAME:
            continue
        target = msg.normalize(rec.host)
        target_path = _text_path(target)
        if target_path is None or not _valid_name(target):
            continue
        zone = _zone_of(target_path, ctx.zones)
        if zone is None:
            continue
        items, _ = _chase(ctx, target, target, _records_for(ctx, target_path, zone, qtype), qtype,
                          frozenset((target,)), 0, external=False)
        out.extend((None, rdtype, ttl, rdata) for _, rdtype, ttl, rdata in items if rdtype == qtype)
    return out


def _records_for(ctx: _Ctx, path: tuple[str, ...], zone: _Zone, qtype: int) -> list[msg.Service]:
    """The records a name in ``zone`` answers with, with the apex, kube2sky and pod rules applied."""
    view = ctx.view
    if qtype in _ADDRESS and len(path) == len(zone.path):
        apex = view.find(zone.apex_path, limit=ctx.limit)
        if apex:
            return apex
    if _is_kube(ctx, zone):
        if _structural(ctx, path, zone):
            return view.find(path, exact=True, limit=ctx.limit)
        rel = path[len(zone.path):]
        if qtype == _SRV and len(rel) == 3 and rel[0] == "svc":
            srv = _service_srv(ctx, path)
            if srv:
                return srv
    records = view.find(path, limit=ctx.limit)
    if (not records and ctx.settings.pods == "insecure" and len(path) == len(zone.path) + 3
            and path[len(zone.path)] == "pod" and not view.exists_path(path)):
        ip = _dashed_ip(path[-1])
        if ip is not None:
            return [msg.Service(host=ip, ttl=ctx.settings.pods_ttl or ctx.settings.ttl, key=msg.name_to_key(
                ".".join(reversed(path)) + ".", view.prefix))]
    return records


def _dashed_ip(label: str) -> str | None:
    """``10-1-2-3`` -> ``10.1.2.3``; ``fd00--1`` -> ``fd00::1``; None when it is not an address."""
    try:
        if label.count("-") == 3 and ":" not in label:
            return str(ipaddress.IPv4Address(label.replace("-", ".")))
        return str(ipaddress.IPv6Address(label.replace("-", ":")))
    except ValueError:
        return None


def _ptr_records(ctx: _Ctx, path: tuple[str, ...], reverse: bool) -> list[msg.Service]:
    if not reverse:
        return ctx.view.find(path, exact=True, limit=ctx.limit)
    if not _complete_reverse(path):
        return []
    return ctx.view.find(path, limit=ctx.limit)


def _below(target: str, owner: str) -> bool:
    """Whether ``target`` is ``owner`` or a name below it (both lower-case, fully qualified)."""
    return target == owner or target.endswith("." + owner)


def _pure_alias(records: list[msg.Service]) -> bool:
    return all(not rec.text and _kind(rec.host) is msg.HostType.NAME for rec in records)


def _chase(ctx: _Ctx, owner: str | None, owner_text: str, records: list[msg.Service],
           qtype: int, seen: frozenset[str], depth: int, external: bool = True,
           aliases: bool = True, keep: bool = False) -> tuple[list[_RR], tuple[str, int] | None]:
    """Answer RRs for ``owner``: direct records of ``qtype`` plus CNAME chains (rule 5).

    Returns the RRs (CNAMEs before what they lead to) and the first out-of-zone target.
    With ``external`` false, chains leaving our zones count as ending in nothing; with
    ``aliases`` false no CNAME is made at all (an SRV name, rule 13b); with ``keep`` a CNAME
    stays even when its target has nothing of the type (an alias name, rule 13c).
    """
    settings = ctx.settings
    want = _ADDRESS.get(qtype)
    txt = qtype == _TXT
    default_ttl = settings.ttl  # rrs.ttl, inline: a record's TTL or the default
    if want is not None and _BULK:
        hosts = list(map(_HOST, records))
        kinds = list(map(_kind, hosts))
        if kinds.count(want) == len(kinds):
            # addresses of the family asked only (the usual name), in order
            ttls = list(map(_TTL_OF, records))
            if 0 in ttls:
                ttls = [ttl or default_ttl for ttl in ttls]
            return list(zip(itertools.repeat(owner), itertools.repeat(qtype), ttls, map(_ip, hosts))), None
        if _NAME_KIND not in kinds:
            # addresses only: the records of the family asked, in order
            return [(owner, qtype, rec.ttl or default_ttl, _ip(rec.host))
                    for rec, kind in zip(records, kinds) if kind is want], None
    out: list[_RR] = []
    resolve: tuple[str, int] | None = None
    linked = False  # a name has at most one CNAME: the first alias that leads somewhere
    for rec in records:
        kind = _kind(rec.host)
        if txt and rec.text:
            out.append((owner, _TXT, rec.ttl or default_ttl, rrs.txt_chunks(rec.text)))
            continue
        if kind is want:
            out.append((owner, qtype, rec.ttl or default_ttl, _ip(rec.host)))
            continue
        if kind is not msg.HostType.NAME or linked or not aliases:
            continue
        target = msg.normalize(rec.host)
        if _below(target, owner_text) or target in seen or depth >= MAX_CHAIN:
            continue
        target_path = _text_path(target)
        if target_path is None or not _valid_name(target):
            continue
        link: _RR = (owner, _CNAME, rrs.ttl(rec, settings), target)
        zone = _zone_of(target_path, ctx.zones)
        if zone is None:
            if external:
                out.append(link)
                resolve, linked = (target, qtype), True
            continue
        next_records = _records_for(ctx, target_path, zone, qtype)
        sub, sub_resolve = _chase(ctx, target, target, next_records, qtype, seen | {target},
                                  depth + 1, external, keep=keep)
        if sub or keep:
            out.append(link)
            out.extend(sub)
            resolve, linked = sub_resolve, True
    return out, resolve


# The addresses a name answers with when every record it read is an address of the family
# asked (_addresses), by (name, type, default TTL): [records, TTLs, addresses, the RRset's TTL,
# its distinct addresses]. tests/skydns/test_answering_fast.py turns it off to compare.
_MEMO_ADDRESSES = True
_addressed = kept_mod.Kept(8192)  # records held by the entries at most (emptied together when full)


def _addresses(qtext: str, qtype: int, records: list[msg.Service], default_ttl: int) -> list | None:
    """What ``_chase`` and ``Section.extend`` make of ``records`` for an A/AAAA query of the
    name ``qtext`` when every record is an address of that family: the RRset's TTL and its
    distinct addresses in order (at [3] and [4]; never changed once returned); None otherwise.

    Kept per name (rule 15): when ``records`` holds the records of the last call but a few (new
    values in the same places), only those are read again."""
    key = (qtext, qtype, default_ttl)
    kept = _addressed.get(key)
    want = _ADDRESS[qtype]
    if kept is not None and len(kept[0]) == len(records):
        changed = _changed_at(records, kept[0])
        if not changed:
            return kept
        if len(changed) <= _PATCH_MOST:
            ttls, addresses = list(kept[1]), list(kept[2])
            for at in changed:
                rec = records[at]
                if _kind(rec.host) is not want:
                    return None
                ttls[at] = rec.ttl or default_ttl
                addresses[at] = _ip(rec.host)
            got = _addressed[key] = [records, ttls, addresses, min(ttls), list(dict.fromkeys(addresses))]
            return got
    read = _all_addresses(records, want, default_ttl)
    if read is None:
        return None
    hosts, ttls = read
    # an IPv4 host of kind IPV4 is written as ipaddress writes it (_kind): its own canonical text
    addresses = hosts if want is msg.HostType.IPV4 else list(map(_ip, hosts))
    got = [records, ttls, addresses, min(ttls), list(dict.fromkeys(addresses))]
    _addressed.keep(key, got, len(records))
    return got


def _changed_at(new: list, old: list) -> list[int]:
    """The positions where ``new`` holds another object than ``old`` (lists of equal length)."""
    return list(itertools.compress(range(len(new)), map(operator.is_not, new, old)))


def _all_addresses(records: list[msg.Service], kind, default_ttl: int) -> tuple[list, list[int]] | None:
    """The hosts and TTLs (the default for 0) of ``records`` when each host is an address of
    ``kind``; None otherwise."""
    hosts = list(map(_HOST, records))
    at_once = False
    if kind is msg.HostType.IPV4:
        # all plain IPv4 (_kind's IPV4) at once: one match over the hosts a line each (no host
        # holds a newline, and the count of lines says so); else host by host
        joined = "\n".join(hosts)
        at_once = joined.count("\n") + 1 == len(hosts) and _IPV4_LINES.fullmatch(joined) is not None
    if not at_once and list(map(_kind, hosts)).count(kind) != len(hosts):
        return None
    ttls = list(map(_TTL_OF, records))
    if 0 in ttls:
        ttls = [ttl or default_ttl for ttl in ttls]
    return hosts, ttls


def _glue(ctx: _Ctx, target: str, additional: Section) -> None:
    """In-zone A/AAAA (with CNAMEs) of an SRV/MX/NS target name into ``additional``."""
    target_path = _text_path(target)
    if target_path is None or not _valid_name(target):
        return
    zone = _zone_of(target_path, ctx.zones)
    if zone is None:
        return
    # one lookup serves both families (they differ only at an apex, rule 9)
    _glue_records(ctx, target, target_path, zone, _records_for(ctx, target_path, zone, _A), additional)


def _glue_records(ctx: _Ctx, target: str, target_path: tuple[str, ...], zone: _Zone,
                  records: list[msg.Service], additional: Section) -> None:
    """``_glue`` of a target whose records (``_records_for`` for A) are known."""
    if _GLUE_ADDRESSES and len(target_path) != len(zone.path):
        kinds = [_kind(rec.host) for rec in records]
        if msg.HostType.NAME not in kinds:
            # addresses only (the usual endpoint): what _chase gives for A, then for AAAA
            default_ttl = ctx.settings.ttl
            for want, rdtype in ((msg.HostType.IPV4, _A), (msg.HostType.IPV6, _AAAA)):
                items = [(target, rdtype, rec.ttl or default_ttl, _ip(rec.host))
                         for rec, kind in zip(records, kinds) if kind is want]
                if items:
                    additional.extend(items, ctx.qtext)
            return
    for rdtype in (_A, _AAAA):
        if rdtype == _AAAA and len(target_path) == len(zone.path):
            records = _records_for(ctx, target_path, zone, rdtype)
        items, _ = _chase(ctx, target, target, records, rdtype, frozenset((target,)), 0)
        additional.extend(items, ctx.qtext)


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _target(host: str, key: str, targetstrip: int, prefix: str) -> str:
    """rrs.target of a record, by the only fields it reads (records are immutable).

    Raises:
        msg.PathError: as rrs.target does.
    """
    return rrs.target_of(host, key, targetstrip, prefix)


def _target_glue(ctx: _Ctx, rec: msg.Service, kind: msg.HostType, target: str, ttl: int,
                 glued: set[str], additional: Section) -> None:
    """Glue for one SRV/MX/NS target into ``additional``: the record's own address when its host
    is an IP, else the target name's records (``_glue``), once per target (``glued``)."""
    if kind is msg.HostType.NAME:
        if target not in glued:
            glued.add(target)
            _glue(ctx, target, additional)
    else:
        rdtype = _A if kind is msg.HostType.IPV4 else _AAAA
        additional.add(target, ctx.qtext, rdtype, ttl, _ip(rec.host))


def _choose(records: list[msg.Service], qtype: int, prefix: str, default_priority: int,
            default_ttl: int) -> tuple[list[tuple], dict[int, int], list[_RR]]:
    """The SRV/MX targets of records (rule 7): ``(prio, weight, target, record, kind)`` per
    distinct target record, the weight sums per priority, and the answer RRs."""
    seen: set[tuple[int, int, int, str]] = set()
    chosen: list[tuple[int, int, str, msg.Service, msg.HostType]] = []
    sums: dict[int, int] = {}
    for rec in records:
        kind = _kind(rec.host)
        if kind is msg.HostType.NONE or (qtype == _MX and not rec.mail):
            continue
        try:
            target = _target(rec.host, rec.key, rec.targetstrip, prefix)
        except msg.PathError:
            continue
        if not _valid_name(target):
            continue
        prio = rec.priority or default_priority  # rrs.priority, inline
        weight = rec.weight or 100
        ident = (prio, weight, rec.port, target)
        if ident in seen:
            continue
        seen.add(ident)
        chosen.append((prio, weight, target, rec, kind))
        sums[prio] = sums.get(prio, 0) + weight
    items: list[_RR] = []
    for prio, weight, target, rec, kind in chosen:
        ttl = rec.ttl or default_ttl  # rrs.ttl, inline
        if qtype == _SRV:
            items.append((None, _SRV, ttl, (prio, min(0xFFFF, max(1, 100 * weight // sums[prio])), rec.port, target)))
        else:
            items.append((None, _MX, ttl, (prio, target)))
    # what Section.extend makes of the items when they are one new RRset: (ttl, distinct rdatas)
    run = (min(map(_TTL, items)), list(dict.fromkeys(map(_RDATA, items)))) if items else None
    return chosen, sums, items, _names(chosen), _groups(chosen), run


def _names(chosen: list[tuple]) -> list[str] | None:
    """The targets of chosen when every one is a name and no two are equal, else None."""
    names = [target for _, _, target, _, kind in chosen if kind is _NAME_KIND]
    return names if len(names) == len(chosen) and len(set(names)) == len(names) else None


def _groups(chosen: list[tuple]) -> dict[str, tuple[list[tuple[str, str]], list[str], list[str] | None]]:
    """The name targets of chosen by the name they are children of: ``rest -> (members
    (target, label), their targets, their labels when every label can be glued from the
    parent's read (not ``_``, not a wildcard, written in lower case) else None)``."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for _, _, target, _, kind in chosen:
        if kind is _NAME_KIND:
            label, _, rest = target.partition(".")
            held = groups.get(rest)
            if held is None:
                groups[rest] = [(target, label)]
            else:
                held.append((target, label))
    out = {}
    for rest, members in groups.items():
        labels = [label for _, label in members]
        plain = all(label[:1] != "_" and label not in _WILDCARDS and label == label.strip().lower()
                    for label in labels)
        out[rest] = (members, [target for target, _ in members], labels if plain else None)
    return out


# What _choose made of a list of records, by the identities of the records (the entry holds
# them, so no other object can have their ids while it is kept): the SRV records of a name
# come from the store's kept finds (store rule 14) as the same objects until one changes.
# tests/skydns/test_answering_fast.py turns it off to compare.
_MEMO_TARGETS = True
_TARGETS_KEPT = 8192  # records held by the entries at most (they are emptied together when full)
_chosen: dict[tuple, tuple] = {}
_chosen_records = 0


def _targets(ctx: _Ctx, records: list[msg.Service], qtype: int, answer: Section,
             additional: Section) -> None:
    """SRV or MX answers with SkyDNS weights and glue (rule 7)."""
    settings = ctx.settings
    prefix = ctx.view.prefix
    default_ttl = settings.ttl
    if _MEMO_TARGETS:
        global _chosen_records
        key = (qtype, prefix, settings.default_priority, default_ttl, tuple(map(id, records)))
        got = _chosen.get(key)
        if got is None:
            if _chosen_records + len(records) > _TARGETS_KEPT:
                _chosen.clear()
                _chosen_records = 0
            got = _chosen[key] = (tuple(records),) + _choose(records, qtype, prefix, settings.default_priority,
                                                              default_ttl)
            _chosen_records += len(records) + 1
        _, chosen, sums, items, names, groups, run = got
    else:
        chosen, sums, items, names, groups, run = _choose(records, qtype, prefix, settings.default_priority,
                                                          default_ttl)
        run = None
    glued: set[str] = set()
    qtext = ctx.qtext
    if not (_BATCH_GLUE and len(chosen) >= _BATCH_MIN):
        for prio, weight, target, rec, kind in chosen:
            ttl = rec.ttl or default_ttl  # rrs.ttl, inline
            if qtype == _SRV:
                share = min(0xFFFF, max(1, 100 * weight // sums[prio]))
                answer.add(None, qtext, _SRV, ttl, (prio, share, rec.port, target))
            else:
                answer.add(None, qtext, _MX, ttl, (prio, target))
            _target_glue(ctx, rec, kind, target, ttl, glued, additional)
        return
    # Many targets: the answers first, then the glue in the same order (the sections are
    # independent), the glue of targets below one name read at once (_batched).
    if run is not None and _BULK and _BULK_MIN <= len(items) <= answer.limit and not answer.count:
        # what extend makes of them: one RRset, kept with the targets (rule 15)
        answer.adopt([[None, qtext, qtype, run[0], run[1]]], len(run[1]))
    else:
        answer.extend(items, qtext)
    runs: list[tuple] = []
    known = _batched(ctx, chosen, groups, runs)
    if names is not None and _BULK:
        if (len(groups) == 1 and len(runs) == 1 and len(runs[0][1]) == len(names)
                and _BULK_MIN <= len(names) <= additional.limit and not additional.count):
            # one name above every target (a headless service), each glued by one address:
            # the RRsets extend would make of the batches below, kept per found (rule 15)
            additional.adopt(runs[0][1], len(names))
            return
    for targets, rrsets in runs:
        known.update(zip(targets, _glue_items(rrsets)))
    if names is not None and _BULK:
        batches = list(map(known.get, names))
        if None not in batches and tuple not in map(type, batches):
            # every target a distinct name glued from a batched read: the glue in target order
            additional.extend(list(itertools.chain.from_iterable(batches)), qtext)
            return
    pending: list[_RR] = []  # address glue of batched targets, added in one extend
    for prio, weight, target, rec, kind in chosen:
        if kind is msg.HostType.NAME:
            if target in glued:
                continue
            glued.add(target)
            batch = known.get(target)
            if type(batch) is list:
                pending.extend(batch)
                continue
            if pending:
                additional.extend(pending, qtext)
                pending = []
            if batch is None:
                _glue(ctx, target, additional)
            else:
                _glue_records(ctx, target, batch[0], batch[1], batch[2], additional)
        else:
            if pending:
                additional.extend(pending, qtext)
                pending = []
            _target_glue(ctx, rec, kind, target, rec.ttl or default_ttl, glued, additional)
    if pending:
        additional.extend(pending, qtext)


def _batched(ctx: _Ctx, chosen: list[tuple], groups: dict | None = None,
             runs: list | None = None) -> dict[str, list[_RR] | tuple]:
    """The glue records of many name targets at once, for targets that are children of one
    name P at or above the query name and at least three labels below the zone (a headless
    service's endpoints ``<hash>.<svc>.<ns>.svc.<zone>``), read with one ``find(P)`` instead of
    one per target. Returns target -> its glue RRs when its records are all addresses (what
    ``_glue_records`` adds: A then AAAA), else (path, zone, records) for ``_glue_records``.

    The same records: a child C of P (not ``_``, not a wildcard, not a zone of its own)
    answers with the records of P's subtree at or below C, in key order, when that read of P
    is complete (fewer records than its cap) and holds no grouped record (then no group rule
    filtered it, and none filters C's). The read of P covers every key a read of C would
    (``anscache`` rule 1a). Targets with nothing in P's read (nothing stored, a pod name, a
    hidden label) are left to ``_glue``.
    """
    name = msg.HostType.NAME
    if groups is None:
        groups = _groups(chosen)
    known: dict[str, list[_RR] | tuple] = {}
    qpath = ctx.path
    for rest, (members, targets, labels) in groups.items():
        if len(members) < _BATCH_MIN:
            continue
        parent = _text_path(rest)
        if (parent is None or qpath[:len(parent)] != parent or not _WILDCARDS.isdisjoint(parent)):
            continue
        zone = _zone_of(parent, ctx.zones)
        if zone is None or len(parent) - len(zone.path) < 3:
            continue
        _is_kube(ctx, zone)  # read as _records_for reads it
        cap = min(ctx.limit, 4 * len(members) + 16)
        found = ctx.view.find(parent, limit=cap)
        if len(found) >= cap:
            continue
        base = "/" + ctx.view.prefix + "/" + "/".join(parent) + "/"
        zoned = {z.path[-1] for z in ctx.zones if len(z.path) == len(parent) + 1 and z.path[:-1] == parent}
        default_ttl = ctx.settings.ttl
        if labels is not None and not zoned and _GLUE_ADDRESSES and _BULK and found:
            # the usual headless service: one IPv4 record per child, plain keys, no group
            glue = _address_glue(found, base, labels, targets, default_ttl)
            if glue is not None:
                if runs is not None:
                    runs.append((targets, glue[4]))  # the caller fills known
                else:
                    known.update(zip(targets, _glue_items(glue[4])))
                continue
        cut = len(base)
        by_label: dict[str, list[msg.Service]] = {}
        grouped = False
        for rec in found:
            if rec.group:
                grouped = True
                break
            low = rec.key.lower()
            if "//" in low or low[-1:] == "/":
                low = "/" + "/".join(seg for seg in low.split("/") if seg)
            if low.startswith(base):
                label = low[cut:].partition("/")[0]
                held = by_label.get(label)
                if held is None:
                    by_label[label] = [rec]
                else:
                    held.append(rec)
        if grouped:
            continue
        for target, label in members:
            records = by_label.get(label)
            if (not records or label[:1] == "_" or label in _WILDCARDS or label in zoned
                    or label != label.strip().lower()):
                continue
            if _GLUE_ADDRESSES:
                v4: list[_RR] = []
                v6: list[_RR] = []
                for rec in records:
                    kind = _kind(rec.host)
                    if kind is msg.HostType.IPV4:
                        v4.append((target, _A, rec.ttl or default_ttl, _ip(rec.host)))
                    elif kind is msg.HostType.IPV6:
                        v6.append((target, _AAAA, rec.ttl or default_ttl, _ip(rec.host)))
                    elif kind is name:
                        break
                else:
                    if v6:
                        v4.extend(v6)
                    known[target] = v4
                    continue
            known[target] = (parent + (label,), zone, records)
    return known


# The address glue of a headless service's targets (_address_glue), by (base, default TTL,
# the targets' labels): [labels, found, position -> label, label -> target index, the RRsets].
# tests/skydns/test_answering_fast.py turns it off to compare.
_MEMO_GLUE = True
_PATCH_MOST = 8   # changed records patched into an entry; more are read again
_glued = kept_mod.Kept(8192)  # records held by the entries at most (emptied together when full)


def _address_glue(found: list[msg.Service], base: str, labels: list[str], targets: list[str],
                  default_ttl: int) -> list | None:
    """The glue of children ``labels`` (names ``targets``) of the name whose records (its read,
    ``found``) sit at the keys ``base + label``, one IPv4 address each, no group: the RRset
    ``[target, target, A, ttl, [address]]`` per target (at [4] of what it returns; never
    changed once returned); None when the records are not of that shape.

    Kept per labels and base (rule 15): when ``found`` holds the records of the last call but
    a few (same keys, in the same places), only the targets of those are built again."""
    if _MEMO_GLUE:
        key = (base, default_ttl, id(labels))
        kept = _glued.get(key)
        if kept is not None and kept[0] is labels:
            old = kept[1]
            if len(old) == len(found):
                changed = _changed_at(found, old)
                if not changed:
                    return kept
                if len(changed) <= _PATCH_MOST:
                    patched = _patch_glue(kept, found, changed, default_ttl)
                    if patched is not None:
                        _glued[key] = patched
                        return patched
    low = "\n".join(map(_KEY, found)).lower()
    if not (low.startswith(base) and low.count("\n" + base) == len(found) - 1 and "/" not in
            (rests := ("\n" + low).replace("\n" + base, "\n")[1:])
            and not any(map(_GROUP_OF, found))):
        return None
    # no "/" in the rests: each record is a child's only one
    rests_list = rests.split("\n")
    records = list(map(dict(zip(rests_list, found)).get, labels))
    if _NONE_TYPE in map(type, records):
        return None
    read = _all_addresses(records, _IPV4_KIND, default_ttl)
    if read is None:
        return None
    hosts, ttls = read
    # the RRsets Section.extend makes of [(target, A, ttl, address)] per target
    rrsets = list(map(list, zip(targets, targets, itertools.repeat(_A), ttls, map(list, zip(map(_ip, hosts))))))
    got = [labels, found, rests_list, {label: i for i, label in enumerate(labels)}, rrsets]
    if _MEMO_GLUE:
        _glued.keep(key, got, len(found))
    return got


def _patch_glue(kept: list, found: list[msg.Service], changed: list[int], default_ttl: int) -> list | None:
    """``kept`` with the records at positions ``changed`` of ``found`` read again, or None when
    one of them is not a new value at the same key (then everything is read again)."""
    labels, old, rests, index, rrsets = kept
    rrsets = list(rrsets)
    for at in changed:
        rec = found[at]
        if rec.key != old[at].key or rec.group:
            return None
        i = index.get(rests[at])
        if i is None:
            continue  # a child no target names: in no glue
        if _kind(rec.host) is not _IPV4_KIND:
            return None
        target = rrsets[i][0]
        ttl = rec.ttl or default_ttl
        rrsets[i] = [target, target, _A, ttl, [_ip(rec.host)]]
    return [labels, found, rests, index, rrsets]


def _glue_items(rrsets: list[list]) -> list[list[_RR]]:
    """Per glue RRset ``[owner, owner, rdtype, ttl, [rdata]]`` its ``[(owner, rdtype, ttl, rdata)]``."""
    return [[(owner, rdtype, ttl, rdatas[0])] for owner, _, rdtype, ttl, rdatas in rrsets]


def _ns(ctx: _Ctx, zone: _Zone) -> Plan:
    """NS at the apex from ``ns.dns.<zone>`` (rule 9)."""
    settings = ctx.settings
    qtext = ctx.qtext
    answer = Section(ctx.limit)
    additional = Section(ctx.limit)
    glued: set[str] = set()
    records = ctx.view.find(zone.ns_path, limit=ctx.limit)
    if _is_kube(ctx, zone):
        # rule 13d: one server, ns.dns.<zone>. (the SOA's MNAME), glued with every address
        # stored under that name, however kube2sky named its leaves
        ttl = min((rrs.ttl(rec, settings) for rec in records), default=settings.ttl)
        answer.add(None, qtext, _NS, ttl, zone.default_ns)
        for rec in records:
            kind = _kind(rec.host)
            if kind in (msg.HostType.IPV4, msg.HostType.IPV6):
                rdtype = _A if kind is msg.HostType.IPV4 else _AAAA
                additional.add(zone.default_ns, qtext, rdtype, rrs.ttl(rec, settings), _ip(rec.host))
        records = []
    for rec in records:
        kind = _kind(rec.host)
        if kind is msg.HostType.NONE:
            continue
        try:
            target = rrs.target(rec, ctx.view.prefix)
        except msg.PathError:
            continue
        if not _valid_name(target):
            continue
        ttl = rrs.ttl(rec, settings)
        answer.add(None, qtext, _NS, ttl, target)
        _target_glue(ctx, rec, kind, target, ttl, glued, additional)
    if not answer.count:
        answer.add(None, qtext, _NS, settings.ttl, zone.default_ns)
    return Plan(answer=answer.rrsets(), additional=additional.rrsets())


# -- the reference renderer: a plan as a dnspython message ------------------------------------

def to_message(query: dns.message.Message, result: Plan, settings: settings_mod.Settings) -> dns.message.Message:
    """The reply to ``query`` that ``result`` describes, as a dnspython message."""
    resp = _skeleton(query, settings, aa=result.aa, rcode=result.rcode)
    qname = query.question[0].name
    resp.answer = [_rrset(entry, qname) for entry in result.answer]
    resp.authority = [_rrset(entry, qname) for entry in result.authority]
    resp.additional = [_rrset(entry, qname) for entry in result.additional]
    return resp


def _rrset(entry: list, qname: dns.name.Name) -> dns.rrset.RRset:
    display, owner, rdtype, ttl, rdatas = entry
    rrset = dns.rrset.RRset(qname if display is None else _dns_name(owner), _IN, rdtype)
    for value in rdatas:
        rrset.add(_rdata(rdtype, value), ttl)
    return rrset


@functools.lru_cache(maxsize=kept_mod.NAMES)
def _dns_name(text: str) -> dns.name.Name:
    return rrs.name(text)


def _rdata(rdtype: int, value: object) -> dns.rdata.Rdata:
    """A dnspython rdata from a plan's plain value (see Section)."""
    if rdtype in (_A, _AAAA):
        return rrs.address_text(value, rdtype)  # type: ignore[arg-type]
    if rdtype == _CNAME:
        return rrs.cname(_dns_name(value))  # type: ignore[arg-type]
    if rdtype == _PTR:
        return rrs.ptr(_dns_name(value))  # type: ignore[arg-type]
    if rdtype == _NS:
        return rrs.ns(_dns_name(value))  # type: ignore[arg-type]
    if rdtype == _SRV:
        prio, weight, port, target = value  # type: ignore[misc]
        return rrs.srv(prio, weight, port, _dns_name(target))
    if rdtype == _MX:
        pref, target = value  # type: ignore[misc]
        return rrs.mx(pref, _dns_name(target))
    if rdtype == _TXT:
        return rrs.txt_from_chunks(value)  # type: ignore[arg-type]
    if rdtype == _HINFO:
        cpu, os = value  # type: ignore[misc]
        return rrs.hinfo(cpu, os)
    if rdtype == _SOA:
        mname, rname, serial, refresh, retry, expire, minimum = value  # type: ignore[misc]
        return rrs.soa_rdata(_dns_name(mname), _dns_name(rname), serial, refresh, retry, expire, minimum)
    raise ValueError(f"no plain rdata for type {rdtype}")
