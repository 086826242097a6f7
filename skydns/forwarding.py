"""Forwarding names outside our zones to upstream resolvers.

EDGE: asyncio sockets of its own (one UDP socket per exchange, so every query gets a fresh
random source port and ID from the kernel and the RNG).

Rules:
1. forward() never raises. It returns the client's reply: same ID and question, RA set, the
   client's EDNS honoured. SERVFAIL when no upstream gave a usable answer (and no stale cache
   entry exists), REFUSED when more than max_concurrent distinct exchanges are in flight.
2. Order of upstreams per query comes from the policy: sequential (configured order),
   round_robin (start rotates by one per query), random (a fresh permutation). Healthy
   upstreams come first, down ones after them; upstreams found to loop back to us are never
   used until a later loop check clears them. While every upstream of the group is down, no
   upstream is asked: the query gets SERVFAIL (or a stale answer) at once, and the background
   health checks bring an upstream back as soon as it answers (rule 4).
3. One attempt per upstream: UDP, then TCP when the reply is truncated. A reply counts only
   when its ID, QR flag and question match what we sent (error replies may lack the
   question); anything else is ignored and the attempt ends at its timeout. Timeout, network
   error and an rcode in forward_failover_rcodes (FORMERR, SERVFAIL, NOTIMP, REFUSED) move on
   to the next upstream; all of this within forward_deadline. If every upstream failed that
   way the client gets SERVFAIL; an NXDOMAIN listed there is relayed if nothing better comes.
4. Consecutive failures (timeouts, network errors, failover rcodes) mark an upstream down
   after forward_max_fails; a background check (". IN NS") every forward_health_interval
   brings it back. An upstream coming back forgets every cached failure (rule 6a).
5. Identical queries in flight (same cache key) share one upstream exchange.
6. NOERROR/NXDOMAIN answers go through fwdcache (TTL count-down, serve-stale).
   6a. A query every upstream failed (SERVFAIL, "all upstreams failed", every upstream down)
   is answered SERVFAIL from memory for servfail_cache_ttl seconds (fwdcache.Failures),
   unless a stale answer can be served instead.
   6b. An upstream reply never brings records for a name in our zones: such RRsets are
   dropped from every section before the answer is cached or relayed.
7. Stub domains: the longest configured suffix of the qname picks its own upstream group.
8. The hosts file (when configured) is answered before any of this (also with -no-rec).
9. Loop check: a signed random HINFO probe "<nonce>.<upstream#>.<mac>.loop-check." goes
   through each upstream at start and every loop_check_interval; any "*.loop-check." query
   reaching forward() is answered SERVFAIL (never forwarded again), and a correctly signed one
   marks the upstream it was sent through as looping: logged, not used, ready() false. The
   secret is shared by the forked workers, so whichever worker receives a probe knows.
10. Encoded answers (the transport's hot path): remember_encoded() keeps the rendered reply
   of a cached forwarded answer under the transport's cache key; encoded_reply() serves it
   with ID, RD, qname case and TTLs patched, until the cache entry expires. They do not
   depend on the store: forget(name) drops every cached answer of a name (the transport calls
   it when a reverse name becomes local), and a hosts-file reload forgets the names whose
   hosts entries changed. CD queries and truncated replies are never kept.
11. lookup() (the out-of-zone end of an in-zone CNAME chain) returns only the chased chain:
   CNAMEs from the asked name on, each owned by the previous link's target, then the records
   of the asked type owned by the last target; anything else in the upstream's reply (other
   owners, other types, names in our zones) is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import random
import socket
import struct
import time
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from skydns import fwdcache
from skydns import hosts as hostsfile
from skydns import metrics
from skydns import settings as settings_mod
from skydns import wire

logger = logging.getLogger(__name__)

POLICIES = ("random", "round_robin", "sequential")
LOOP_SUFFIX = "loop-check."
CACHE_NAME = "forward"  # the cache label of skydns_cache_{hits,misses}_total / skydns_cache_entries
_LOOP_NAME = dns.name.from_text(LOOP_SUFFIX)
_UDP_MAX = 65535
_EDNS_PAYLOAD = 1232
# Error replies accepted without a question section (FORMERR, SERVFAIL, NOTIMP, REFUSED).
_QUESTIONLESS_RCODES = (1, 2, 4, 5)

# Secret of the loop probes, made at import: the worker processes of one skydns fork after
# importing this module and share it, so a probe from any of them that reaches any of them is
# recognised as ours (and a client cannot forge one to switch an upstream off).
_SECRET = os.urandom(16)


class ForwardError(Exception):
    """One upstream exchange failed (timeout, network error, unusable reply)."""


def is_loop_probe(qname: dns.name.Name | str) -> bool:
    """True for names shaped like our loop probes (cheap; for the transport's miss path)."""
    if isinstance(qname, dns.name.Name):
        return qname.is_subdomain(_LOOP_NAME)
    text = qname.lower()
    return text.endswith("." + LOOP_SUFFIX) or text.endswith(".loop-check") or text in ("loop-check", LOOP_SUFFIX)


def probe_name(nonce: int, index: int) -> str:
    """The loop probe for upstream number index: "<nonce>.<index>.<mac>.loop-check."."""
    return f"{nonce:016x}.{index}.{_probe_mac(f'{nonce:016x}', str(index))}.{LOOP_SUFFIX}"


def _probe_mac(nonce: str, index: str) -> str:
    return hmac.new(_SECRET, f"{nonce}.{index}".encode(), hashlib.sha256).hexdigest()[:16]


def probe_index(qname: str) -> int | None:
    """The upstream number of one of our signed probes (lower-case text), else None."""
    labels = qname.split(".")
    if len(labels) != 5 or labels[3] != LOOP_SUFFIX[:-1] or not labels[1].isdigit() or len(labels[1]) > 4:
        return None
    if not hmac.compare_digest(labels[2], _probe_mac(labels[0], labels[1])):
        return None
    return int(labels[1])


def policy_of(settings: settings_mod.Settings) -> str:
    """The effective forward policy (an explicit policy wins over -ns-rotate)."""
    if settings.forward_policy:
        return settings.forward_policy
    return "round_robin" if settings.ns_rotate else "sequential"


# ---------------------------------------------------------------------------------------------
# metrics: objects live in skydns.metrics (its FORWARD section); absent ones are skipped


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, *args: Any) -> None:
        pass

    def set(self, *args: Any) -> None:
        pass

    def observe(self, *args: Any) -> None:
        pass


_NOOP = _Noop()


class _Metrics:
    NAMES = (
        "forward_requests", "forward_responses", "forward_duration", "forward_healthcheck_failures",
        "forward_upstream_healthy", "forward_max_concurrent_rejects", "forward_loop_detected",
        "forward_loop_probes_received", "hosts_entries",
    )

    def __init__(self, module: Any) -> None:
        for name in self.NAMES:
            found = getattr(module, name, None)
            setattr(self, name, _NOOP if found is None else found)
        self.dns = getattr(module, "DNS", None)

    def cache_hit(self, cache: str) -> None:
        if self.dns is not None:
            self.dns.hit(cache)

    def cache_miss(self, cache: str) -> None:
        if self.dns is not None:
            self.dns.miss(cache)

    def cache_entries(self, cache: str, n: int) -> None:
        if self.dns is not None:
            self.dns.cache_entries[cache] = n


# ---------------------------------------------------------------------------------------------
# one upstream


@dataclasses.dataclass(slots=True)
class Upstream:
    """An upstream resolver and what we know about its health."""

    address: settings_mod.Upstream
    label: str = ""
    fails: int = 0
    down: bool = False
    looped: bool = False

    def __post_init__(self) -> None:
        self.label = str(self.address)

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.address.host, self.address.port)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.address.host else socket.AF_INET


@dataclasses.dataclass(slots=True)
class _Group:
    """Upstreams serving one domain ("." for the default group)."""

    domain: dns.name.Name
    upstreams: list[Upstream]
    next_start: int = 0


def _question_end(wire: bytes) -> int:
    """Offset just past the (single, uncompressed) question of a message we built."""
    offset = 12
    while wire[offset]:
        offset += wire[offset] + 1
    return offset + 5


def _matches(wire: bytes, qend: int, data: bytes) -> bool:
    """Same ID, QR set, one question, and the question we sent (names compared case-insensitively);
    or an error reply (FORMERR, SERVFAIL, NOTIMP, REFUSED) with no question at all.

    A question name is never compressed (nothing precedes it) and label lengths are below 64,
    so bytes.lower() only folds the letters of the name.
    """
    if len(data) < 12 or data[:2] != wire[:2] or not data[2] & 0x80:
        return False
    if data[4:6] == b"\x00\x00":  # some servers drop the question from error replies
        return data[3] & 0x0F in _QUESTIONLESS_RCODES
    return len(data) >= qend and data[4:6] == b"\x00\x01" and data[12:qend].lower() == wire[12:qend].lower()


def _reply(wire: bytes, qend: int, data: bytes, upstream: Upstream, via: str) -> dns.message.Message | None:
    """data as the reply to wire; None (logged at debug) when it answers another query
    (``_matches``) or does not parse. via names the transport in the log line ("" or "TCP ")."""
    if not _matches(wire, qend, data):
        logger.debug("forward: %sreply from %s with wrong id/question ignored", via, upstream.label)
        return None
    try:
        return dns.message.from_wire(data, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        logger.debug("forward: unparsable reply from %s ignored: %s", upstream.label, exc)
        return None


async def _udp(wire: bytes, qend: int, upstream: Upstream) -> dns.message.Message:
    loop = asyncio.get_running_loop()
    sock = socket.socket(upstream.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(upstream.sockaddr)
        await loop.sock_sendall(sock, wire)
        while True:
            data = await loop.sock_recv(sock, _UDP_MAX)
            reply = _reply(wire, qend, data, upstream, "")
            if reply is not None:
                return reply
    finally:
        sock.close()


async def _tcp(wire: bytes, qend: int, upstream: Upstream) -> dns.message.Message:
    reader, writer = await asyncio.open_connection(upstream.address.host, upstream.address.port)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            data = await reader.readexactly(length)
            reply = _reply(wire, qend, data, upstream, "TCP ")
            if reply is not None:
                return reply
    finally:
        writer.close()


def query_wire(qid: int, name: dns.name.Name, rdtype: int, rdclass: int, flags: int = dns.flags.RD,
               do: bool = False, payload: int = _EDNS_PAYLOAD) -> bytes:
    """A query with one question and an EDNS0 OPT record, built without dnspython's renderer."""
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, payload, dns.flags.DO if do else 0, 0)
    return header + name.to_wire() + struct.pack("!HH", rdtype, rdclass) + opt


async def exchange(
    query: dns.message.Message | bytes, upstream: Upstream, timeout: float, tcp: bool = False
) -> dns.message.Message:
    """Send query to one upstream (UDP, TCP on truncation); the matching reply or ForwardError."""
    wire = query if isinstance(query, bytes) else query.to_wire()
    try:
        qend = _question_end(wire)
        async with asyncio.timeout(timeout):
            if not tcp:
                reply = await _udp(wire, qend, upstream)
                if not reply.flags & dns.flags.TC:
                    return reply
            return await _tcp(wire, qend, upstream)
    except TimeoutError as exc:
        raise ForwardError(f"timeout after {timeout}s") from exc
    except (OSError, EOFError, IndexError, asyncio.IncompleteReadError, struct.error) as exc:
        raise ForwardError(f"network error: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# what an upstream may tell us (rules 6b and 11)


def _local_zones(domains: tuple[str, ...]) -> tuple[dns.name.Name, ...]:
    zones = []
    for domain in domains:
        try:
            zones.append(dns.name.from_text(domain))
        except dns.exception.DNSException:
            continue
    return tuple(zones)


def _is_local(name: dns.name.Name, local: tuple[dns.name.Name, ...]) -> bool:
    return any(name.is_subdomain(zone) for zone in local)


def scrub(answer: fwdcache.Answer, local: tuple[dns.name.Name, ...]) -> fwdcache.Answer:
    """answer without the RRsets owned by names in our zones (rule 6b)."""
    if not local:
        return answer
    sections = (answer.answer, answer.authority, answer.additional)
    if not any(_is_local(rrset.name, local) for section in sections for rrset in section):
        return answer
    kept = [tuple(r for r in section if not _is_local(r.name, local)) for section in sections]
    return dataclasses.replace(answer, answer=kept[0], authority=kept[1], additional=kept[2])


# Longest chain of CNAMEs taken from an upstream's answer (as for in-zone chains: SkyDNS 8).
MAX_CHAIN = 8


def chain(rrsets: list[dns.rrset.RRset] | tuple[dns.rrset.RRset, ...], name: dns.name.Name, rdtype: int,
          local: tuple[dns.name.Name, ...] = ()) -> list[dns.rrset.RRset]:
    """The chased chain for (name, rdtype) out of an upstream's answer section (rule 11).

    CNAMEs are followed from name on (one CNAME per owner, at most MAX_CHAIN, no loops); the
    result is the CNAME RRsets in chain order, then the RRsets of rdtype owned by the last name.
    A chain that reaches one of our zones stops there: nothing owned by a name in our zones
    is ever taken from an upstream.
    """
    by_owner: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for rrset in rrsets:
        if rrset.rdclass == dns.rdataclass.IN and len(rrset):
            by_owner.setdefault((rrset.name, rrset.rdtype), rrset)
    out: list[dns.rrset.RRset] = []
    owner = name
    seen = {owner}
    while not _is_local(owner, local):
        if rdtype != dns.rdatatype.CNAME:
            wanted = by_owner.get((owner, rdtype))
            if wanted is not None:
                out.append(wanted)
                break
        link = by_owner.get((owner, dns.rdatatype.CNAME))
        if link is None or len(out) >= MAX_CHAIN:
            break
        if len(link) > 1:  # a name has one CNAME: keep only the first
            link = dns.rrset.from_rdata(link.name, link.ttl, link[0])
        out.append(link)
        if rdtype == dns.rdatatype.CNAME:
            break
        owner = link[0].target
        if owner in seen:
            break
        seen.add(owner)
    return out


# ---------------------------------------------------------------------------------------------
# replies to clients


def _rcode_reply(query: dns.message.Message, rcode: int, payload: int) -> dns.message.Message:
    reply = dns.message.make_response(query, recursion_available=True, our_payload=payload)
    reply.set_rcode(rcode)
    return reply


def respond(query: dns.message.Message, answer: fwdcache.Answer, payload: int = _EDNS_PAYLOAD) -> dns.message.Message:
    """The client's reply carrying an upstream answer (ID, question, RD, EDNS from the query)."""
    reply = dns.message.make_response(query, recursion_available=True, our_payload=payload)
    if query.edns >= 0 and query.ednsflags & dns.flags.DO:
        reply.ednsflags |= dns.flags.DO
    reply.set_rcode(answer.rcode)
    reply.flags |= answer.flags
    reply.answer = list(answer.answer)
    reply.authority = list(answer.authority)
    reply.additional = list(answer.additional)
    return reply


_REJECTED = object()


class Forwarder:
    """Upstream forwarding with policies, health, cache, collapse, stub domains and loop check."""

    def __init__(
        self,
        settings: settings_mod.Settings,
        metrics_module: Any = None,
        *,
        clock: Any = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy_of(settings)
        if self.policy not in POLICIES:
            raise ValueError(f"unknown forward policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        self.metrics = _Metrics(metrics_module if metrics_module is not None else metrics)
        self.clock = clock
        # Query IDs and probe names must not be guessable (cache poisoning): the OS's randomness.
        self.rng = rng or random.SystemRandom()
        self.payload = settings.edns_payload or _EDNS_PAYLOAD
        self.default = _Group(dns.name.root, [Upstream(a) for a in settings.nameservers])
        self.stubs = sorted(
            (_Group(dns.name.from_text(domain), [Upstream(a) for a in addrs]) for domain, addrs in settings.stub_domains),
            key=lambda g: len(g.domain),
            reverse=True,
        )
        budget = settings.cache_mib << 20
        self.cache = fwdcache.Cache(
            settings.cache_size, settings.cache_max_ttl, settings.cache_max_negative_ttl, settings.cache_serve_stale,
            max_bytes=budget * 3 // 4,
        )
        self.failures = fwdcache.Failures(max(1, settings.cache_size), settings.servfail_cache_ttl)
        self.hosts = hostsfile.Hosts(settings.hosts_file, settings.hosts_ttl) if settings.hosts_file else None
        self._inflight: dict[fwdcache.Key, asyncio.Future] = {}
        self._encoded = fwdcache.Encodings(max(1, settings.cache_size), max_bytes=budget // 4)
        held = getattr(self.metrics.dns, "cache_bytes", None)
        if held is not None:
            held[CACHE_NAME] = lambda: self.cache.bytes + self._encoded.bytes
        self._local = _local_zones(settings.domains)
        self._tasks: list[asyncio.Task] = []
        self._probe_seen: set[str] = set()
        for upstream in self.upstreams():
            self.metrics.forward_upstream_healthy.labels(upstream.label).set(1)

    # -- lifecycle -----------------------------------------------------------------------------

    def upstreams(self) -> list[Upstream]:
        """Every upstream of every group (default group first)."""
        return [u for g in (self.default, *self.stubs) for u in g.upstreams]

    async def start(self) -> None:
        """Start the background health checks, loop checks and hosts-file reloads."""
        if self.hosts is not None:
            self.hosts.reload()
            self.metrics.hosts_entries.set(len(self.hosts))
            self._tasks.append(asyncio.create_task(self._reload_hosts(), name="hosts-reload"))
        if self.upstreams() and not self.settings.no_rec:
            self._tasks.append(asyncio.create_task(self._check_health(), name="forward-health"))
            if self.settings.loop_check_interval > 0:
                self._tasks.append(asyncio.create_task(self._check_loops(), name="forward-loop-check"))

    async def close(self) -> None:
        """Stop the background tasks."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def ready(self) -> tuple[bool, str]:
        """(True, "") or (False, reason): a forwarding loop, or (if configured) no healthy upstream."""
        looped = [u.label for u in self.upstreams() if u.looped]
        if looped:
            return False, "forwarding loop via " + ", ".join(looped)
        if self.settings.ready_requires_upstream and self.default.upstreams and not self.settings.no_rec:
            if all(u.down for u in self.default.upstreams):
                return False, "no healthy upstream"
        return True, ""

    # -- the query path ------------------------------------------------------------------------

    async def forward(self, query: dns.message.Message, proto: str = "udp") -> dns.message.Message:
        """The reply to a query for a name outside our zones. Never raises."""
        try:
            return await self._forward(query)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - rule 1: a bug here must not cost the client its reply
            logger.exception("forward: unexpected error for %s", query.question[0] if query.question else "?")
            return _rcode_reply(query, dns.rcode.SERVFAIL, self.payload)

    async def lookup(self, name: str | dns.name.Name, rdtype: int) -> list[dns.rrset.RRset]:
        """Answer RRsets for (name, rdtype) through the forwarders; [] on any failure."""
        try:
            query = dns.message.make_query(name, rdtype)
            reply = await self._forward(query)
            if reply.rcode() != dns.rcode.NOERROR:
                return []
            return chain(reply.answer, query.question[0].name, rdtype, self._local)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            logger.exception("forward: lookup of %s %s failed", name, rdtype)
            return []

    async def _forward(self, query: dns.message.Message) -> dns.message.Message:
        if len(query.question) != 1:
            return _rcode_reply(query, dns.rcode.FORMERR, self.payload)
        qname = query.question[0].name
        if is_loop_probe(qname):
            self.metrics.forward_loop_probes_received.inc()
            text = qname.to_text().lower()
            index = probe_index(text)
            upstreams = self.upstreams()
            if index is not None and index < len(upstreams):
                self._probe_seen.add(text)
                self._mark_loop(upstreams[index])
            logger.debug("forward: loop probe %s reached us; answering SERVFAIL", text)
            return _rcode_reply(query, dns.rcode.SERVFAIL, self.payload)
        if self.hosts is not None:
            reply = self.hosts.answer(query)
            if reply is not None:
                return reply
        group = self._group_for(qname)
        if self.settings.no_rec or not group.upstreams:
            return _rcode_reply(query, dns.rcode.SERVFAIL, self.payload)
        key = fwdcache.key_for(query)
        assert key is not None
        now = self.clock()
        hit = self.cache.get(key, now)
        if hit is not None:
            self.metrics.cache_hit(CACHE_NAME)
            return respond(query, hit[0], self.payload)
        if self.failures.failed(key, now):  # rule 6a
            return self._failure(query, key, cached=True)
        self.metrics.cache_miss(CACHE_NAME)
        answer = await self._resolve(key, group, query)
        if answer is _REJECTED:
            return _rcode_reply(query, dns.rcode.REFUSED, self.payload)
        if answer is None or answer.rcode == dns.rcode.SERVFAIL:
            self.failures.put(key, self.clock())
            if answer is None:
                return self._failure(query, key, cached=False)
        return respond(query, answer, self.payload)

    def _failure(self, query: dns.message.Message, key: fwdcache.Key, cached: bool) -> dns.message.Message:
        """SERVFAIL for a query every upstream failed, or a stale answer when one is kept."""
        stale = self.cache.get_stale(key, self.clock())
        if stale is not None:
            if not cached:
                logger.info("forward: every upstream failed for %s; serving a stale answer", key.name)
            self.metrics.cache_hit(CACHE_NAME + "_stale")
            return respond(query, stale[0], self.payload)
        if cached:
            self.metrics.cache_hit(CACHE_NAME + "_servfail")
        return _rcode_reply(query, dns.rcode.SERVFAIL, self.payload)

    def _group_for(self, qname: dns.name.Name) -> _Group:
        for group in self.stubs:
            if qname.is_subdomain(group.domain):
                return group
        return self.default

    async def _resolve(self, key: fwdcache.Key, group: _Group, query: dns.message.Message) -> Any:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if 0 < self.settings.max_concurrent <= len(self._inflight):
            self.metrics.forward_max_concurrent_rejects.inc()
            return _REJECTED
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        answer = None
        try:
            answer = await self._ask_group(group, query)
            if answer is not None:
                if self.cache.put(key, answer, self.clock()) is not None:
                    self.metrics.cache_entries(CACHE_NAME, len(self.cache))
        finally:
            del self._inflight[key]
            future.set_result(answer)
        return answer

    def order(self, group: _Group) -> list[Upstream]:
        """Upstreams to try for one query, in order (rule 2)."""
        upstreams = group.upstreams
        n = len(upstreams)
        if self.policy == "sequential" or n == 1:
            ordered = list(upstreams)
        elif self.policy == "round_robin":
            start = group.next_start % n
            group.next_start = start + 1
            ordered = upstreams[start:] + upstreams[:start]
        else:
            ordered = self.rng.sample(upstreams, n)
        usable = [u for u in ordered if not u.looped]
        return [u for u in usable if not u.down] + [u for u in usable if u.down]

    def _upstream_query(self, query: dns.message.Message) -> bytes:
        question = query.question[0]
        return query_wire(
            self.rng.getrandbits(16), question.name, question.rdtype, question.rdclass,
            dns.flags.RD | (query.flags & dns.flags.CD),
            do=bool(query.edns >= 0 and query.ednsflags & dns.flags.DO),
        )

    async def _ask_group(self, group: _Group, query: dns.message.Message) -> fwdcache.Answer | None:
        deadline = time.monotonic() + self.settings.forward_deadline
        last: fwdcache.Answer | None = None
        upstreams = self.order(group)
        if all(u.down for u in upstreams):
            return None  # rule 2: every upstream is down; the health checks bring them back
        for upstream in upstreams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sent = self._upstream_query(query)
            started = time.perf_counter()
            self.metrics.forward_requests.labels(upstream.label).inc()
            try:
                reply = await exchange(sent, upstream, min(self.settings.forward_timeout, remaining))
            except ForwardError as exc:
                logger.debug("forward: %s via %s failed: %s", query.question[0].name, upstream.label, exc)
                self._failed(upstream, str(exc))
                continue
            finally:
                self.metrics.forward_duration.labels(upstream.label).observe(time.perf_counter() - started)
            rcode = reply.rcode()
            self.metrics.forward_responses.labels(upstream.label, dns.rcode.to_text(rcode)).inc()
            answer = scrub(fwdcache.answer_from(reply), self._local)
            if rcode in self.settings.forward_failover_rcodes:
                if rcode in _QUESTIONLESS_RCODES:  # FORMERR, SERVFAIL, NOTIMP, REFUSED: its failure
                    self._failed(upstream, dns.rcode.to_text(rcode))
                else:
                    last = answer  # e.g. NXDOMAIN: relayed if no upstream does better
                continue
            self._succeeded(upstream)
            return answer
        return last

    def _failed(self, upstream: Upstream, why: str) -> None:
        upstream.fails += 1
        if not upstream.down and upstream.fails >= self.settings.forward_max_fails:
            upstream.down = True
            self.metrics.forward_upstream_healthy.labels(upstream.label).set(0)
            logger.warning("forward: upstream %s marked down after %d failures (last: %s)", upstream.label, upstream.fails, why)

    def _succeeded(self, upstream: Upstream) -> None:
        upstream.fails = 0
        if upstream.down:
            upstream.down = False
            self.failures.clear()  # rule 4: what failed may resolve now
            self.metrics.forward_upstream_healthy.labels(upstream.label).set(1)
            logger.info("forward: upstream %s is healthy again", upstream.label)

    # -- encoded answers for the transport's hot path (rule 10) ---------------------------------

    def encoded_reply(self, query: wire.Query, key: tuple) -> bytes | None:
        """A cached forwarded answer as bytes for a parsed query, or None (take the slow path).

        key is the transport's wire.cache_key(query, limit).
        """
        encoded = self._encoded.get(key)
        if encoded is None or query.flags & dns.flags.CD:
            return None
        out = encoded.at(self.clock())
        if out is None:
            self._encoded.drop(key)
            return None
        self.metrics.cache_hit(CACHE_NAME)
        return wire.patch(out, query)

    def remember_encoded(self, key: tuple, query: dns.message.Message, out: bytes) -> bool:
        """Keep out (the rendered reply forward() gave for query) for encoded_reply().

        Kept only when it came from (or went into) the cache of forwarded answers and was not
        truncated; True when kept.
        """
        if len(out) < 12 or out[2] & 0x02 or out[3] & 0x0F not in (0, 3) or query.flags & dns.flags.CD:
            return False
        cache_key = fwdcache.key_for(query)
        times = self.cache.entry_times(cache_key) if cache_key is not None else None
        if times is None:
            return False
        stored, expires = times
        now = self.clock()
        offsets = fwdcache.ttl_offsets(out)
        if now >= expires or offsets is None:
            return False
        self._encoded.put(key, cache_key.name, fwdcache.Encoded(out, offsets, stored, int(now - stored), expires))
        return True

    def forget(self, name: str) -> None:
        """Drop every cached forwarded answer of name (lower-case, fully qualified text, e.g.
        "1.0.0.10.in-addr.arpa."): encoded replies, cached answers and failures, all types.

        For the transport, when the name becomes local (a reverse name whose PTR record
        appeared), so that its next query is answered from the store.
        """
        name = name.lower()
        self._encoded.forget(name)
        self.cache.forget(name)
        self.failures.forget(name)

    # -- background ----------------------------------------------------------------------------

    async def check_upstream(self, upstream: Upstream) -> bool:
        """One ". IN NS" health check; True when the upstream answered NOERROR or NXDOMAIN."""
        query = dns.message.make_query(dns.name.root, dns.rdatatype.NS, id=self.rng.getrandbits(16))
        try:
            reply = await exchange(query, upstream, self.settings.forward_timeout)
        except ForwardError:
            return False
        return reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.forward_health_interval)
            down = [u for u in self.upstreams() if u.down]
            if not down:
                continue
            results = await asyncio.gather(*(self.check_upstream(u) for u in down))
            for upstream, ok in zip(down, results):
                if ok:
                    self._succeeded(upstream)
                else:
                    self.metrics.forward_healthcheck_failures.labels(upstream.label).inc()

    def _mark_loop(self, upstream: Upstream) -> None:
        if not upstream.looped:
            upstream.looped = True
            self.metrics.forward_loop_detected.labels(upstream.label).set(1)
            logger.error(
                "forward: loop detected: a query sent to %s came back to us; not forwarding to it "
                "(point skydns at a real resolver, not at a stub that forwards to skydns)", upstream.label,
            )

    async def check_loop(self, upstream: Upstream) -> bool:
        """Send one loop probe through upstream; return whether it loops (rule 9).

        A probe that reaches us marks the upstream at once (whichever worker sent it). The mark
        is cleared when our own probe comes back answered without having reached us: any
        answer with one worker; only NOERROR/NXDOMAIN with several, since there the probe may
        have reached another worker (which then answered it SERVFAIL).
        """
        index = next(i for i, u in enumerate(self.upstreams()) if u is upstream)
        name = probe_name(self.rng.getrandbits(64), index)
        reply = None
        try:
            query = dns.message.make_query(name, dns.rdatatype.HINFO, id=self.rng.getrandbits(16))
            try:
                reply = await exchange(query, upstream, self.settings.forward_timeout)
            except ForwardError:
                pass
            seen = name in self._probe_seen
        finally:
            self._probe_seen.discard(name)
        if seen:
            self._mark_loop(upstream)
        elif upstream.looped and reply is not None:
            if self.settings.workers <= 1 or reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                upstream.looped = False
                self.metrics.forward_loop_detected.labels(upstream.label).set(0)
                logger.info("forward: loop via %s is gone; forwarding to it again", upstream.label)
        if not upstream.looped:
            self.metrics.forward_loop_detected.labels(upstream.label).set(0)
        return upstream.looped

    async def check_loops(self) -> None:
        """One loop check of every upstream, concurrently."""
        await asyncio.gather(*(self.check_loop(u) for u in self.upstreams()))

    async def _check_loops(self) -> None:
        while True:
            try:
                await self.check_loops()
            except Exception:  # noqa: BLE001 - a background check never ends the process
                logger.exception("forward: loop check failed")
            await asyncio.sleep(self.settings.loop_check_interval)

    async def _reload_hosts(self) -> None:
        assert self.hosts is not None
        while True:
            await asyncio.sleep(self.settings.hosts_reload)
            try:
                before = self.hosts.table
                if self.hosts.reload():
                    self.metrics.hosts_entries.set(len(self.hosts))
                    for name in hostsfile.changed(before, self.hosts.table):
                        self.forget(name)  # a hosts name may shadow a forwarded one now, or no more
            except Exception:  # noqa: BLE001
                logger.exception("hosts: reload of %s failed", self.settings.hosts_file)


# ---------------------------------------------------------------------------------------------
# command-line options (applied by skydns.cli; defaults come from settings.Settings)


def parse_upstream(text: str) -> settings_mod.Upstream:
    """"10.0.0.1", "10.0.0.1:5353", "fd00::1", "[fd00::1]:5353" -> Upstream; ValueError if bad."""
    import ipaddress

    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return settings_mod.Upstream(host, port)


def parse_stub_domain(text: str) -> tuple[str, tuple[settings_mod.Upstream, ...]]:
    """"corp.example=10.1.2.3:53,10.1.2.4" -> ("corp.example.", (Upstream, Upstream)); ValueError if bad."""
    domain, sep, servers = text.partition("=")
    domain = domain.strip().lower()
    if not sep or not domain or not servers.strip():
        raise ValueError(f"{text!r} is not DOMAIN=IP[:PORT][,IP[:PORT]...]")
    domain = domain if domain.endswith(".") else domain + "."
    dns.name.from_text(domain)
    return domain, tuple(parse_upstream(s) for s in servers.split(",") if s.strip())


def parse_rcodes(values: tuple[str, ...] | list[str]) -> tuple[int, ...]:
    """("SERVFAIL", "REFUSED,NXDOMAIN") -> (2, 5, 3); ValueError for unknown names."""
    out: list[int] = []
    for value in values:
        for name in value.replace(",", " ").split():
            code = int(dns.rcode.from_text(name.upper()))
            if code not in out:
                out.append(code)
    return tuple(out)


# click parameter name -> Settings field, for the options below.
OPTION_FIELDS = {
    "forward_policy": "forward_policy",
    "max_concurrent": "max_concurrent",
    "forward_timeout": "forward_timeout",
    "forward_deadline": "forward_deadline",
    "forward_max_fails": "forward_max_fails",
    "forward_health_interval": "forward_health_interval",
    "forward_failover": "forward_failover_rcodes",
    "stub_domains": "stub_domains",
    "cache_size": "cache_size",
    "cache_mib": "cache_mib",
    "cache_max_ttl": "cache_max_ttl",
    "cache_max_negative_ttl": "cache_max_negative_ttl",
    "cache_serve_stale": "cache_serve_stale",
    "servfail_cache_ttl": "servfail_cache_ttl",
    "loop_check_interval": "loop_check_interval",
    "hosts": "hosts_file",
    "hosts_ttl": "hosts_ttl",
    "hosts_reload": "hosts_reload",
    "ready_requires_upstream": "ready_requires_upstream",
}


def click_options(command: Any) -> Any:
    """Decorator adding the forwarding/cache/loop/hosts options to a click command.

    Env vars follow the parameter names with the command's auto_envvar_prefix (SKYDNS_...).
    Pass the parsed values through settings_from_click() to get Settings fields.
    """
    import click

    d = settings_mod.Settings()

    def option(*decls: str, **attrs: Any) -> Any:
        return click.option(*decls, show_envvar=True, **attrs)

    options = [
        option("--forward-policy", "forward_policy", type=click.Choice(POLICIES), default=None,
                     help="Order in which upstreams are tried. Default: round_robin, or sequential with -ns-rotate=false."),
        option("--max-concurrent", "max_concurrent", type=click.IntRange(min=0), default=d.max_concurrent,
                     show_default=True, help="Most upstream exchanges in flight; beyond it REFUSED (0: no limit)."),
        option("--forward-timeout", "forward_timeout", type=click.FloatRange(min=0, min_open=True),
                     default=d.forward_timeout, show_default=True, help="Timeout of one upstream exchange, seconds."),
        option("--forward-deadline", "forward_deadline", type=click.FloatRange(min=0, min_open=True),
                     default=d.forward_deadline, show_default=True,
                     help="Whole time for one forwarded query across upstreams, seconds."),
        option("--forward-max-fails", "forward_max_fails", type=click.IntRange(min=1),
                     default=d.forward_max_fails, show_default=True,
                     help="Consecutive failures that mark an upstream down."),
        option("--forward-health-interval", "forward_health_interval", type=click.FloatRange(min=0, min_open=True),
                     default=d.forward_health_interval, show_default=True,
                     help="How often a down upstream is checked with '. IN NS', seconds."),
        option("--forward-failover", "forward_failover", multiple=True,
                     default=tuple(dns.rcode.to_text(c) for c in d.forward_failover_rcodes), show_default=True,
                     help="Upstream rcodes that make us try the next upstream (repeat or comma-separate; "
                          "add NXDOMAIN when an upstream cannot resolve public names)."),
        option("--stub-domain", "stub_domains", multiple=True, metavar="DOMAIN=IP[:PORT][,...]",
                     help="Send names under DOMAIN to these resolvers (repeatable; longest suffix wins)."),
        option("--cache-size", "cache_size", type=click.IntRange(min=0), default=d.cache_size,
                     show_default=True, help="Forwarded answers kept (0 turns the cache off)."),
        option("--cache-mib", "cache_mib", type=click.IntRange(min=1), default=d.cache_mib, show_default=True,
                     help="Most memory the forwarded answers take, MiB (least recently used go first)."),
        option("--cache-max-ttl", "cache_max_ttl", type=click.IntRange(min=0), default=d.cache_max_ttl,
                     show_default=True, help="Cap on the cached lifetime of positive answers, seconds."),
        option("--cache-max-negative-ttl", "cache_max_negative_ttl", type=click.IntRange(min=0),
                     default=d.cache_max_negative_ttl, show_default=True,
                     help="Cap on the cached lifetime of NXDOMAIN/NODATA answers, seconds."),
        option("--cache-serve-stale", "cache_serve_stale", type=click.FloatRange(min=0),
                     default=d.cache_serve_stale, show_default=True,
                     help="Serve expired answers this long when every upstream fails, seconds (0: off)."),
        option("--servfail-cache-ttl", "servfail_cache_ttl", type=click.FloatRange(min=0),
                     default=d.servfail_cache_ttl, show_default=True,
                     help="Answer a query every upstream failed SERVFAIL from memory this long, seconds (0: off)."),
        option("--loop-check-interval", "loop_check_interval", type=click.FloatRange(min=0),
                     default=d.loop_check_interval, show_default=True,
                     help="Forwarding-loop probe through each upstream at start and this often, seconds (0: off)."),
        option("--hosts", "hosts", type=click.Path(dir_okay=False), default=d.hosts_file,
                     help="Hosts-format file answered before forwarding; reloaded on change."),
        option("--hosts-ttl", "hosts_ttl", type=click.IntRange(min=0), default=d.hosts_ttl,
                     show_default=True, help="TTL of answers from the hosts file, seconds."),
        option("--hosts-reload", "hosts_reload", type=click.FloatRange(min=0, min_open=True),
                     default=d.hosts_reload, show_default=True, help="How often the hosts file is checked, seconds."),
        option("--ready-requires-upstream/--no-ready-requires-upstream", "ready_requires_upstream",
                     default=d.ready_requires_upstream, show_default=True,
                     help="/ready also needs at least one healthy upstream."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def settings_from_click(params: dict[str, Any]) -> dict[str, Any]:
    """Pop this module's click parameters from params; return the Settings fields they set.

    Every field of OPTION_FIELDS present in params is returned converted, so the result can be
    applied over any raw pass-through of the same names. Raises click.BadParameter naming the
    flag for a bad value.
    """
    import click

    fields: dict[str, Any] = {}
    for param, field in OPTION_FIELDS.items():
        if param in params:
            fields[field] = params.pop(param)
    if "forward_policy" in fields and fields["forward_policy"] is None:
        fields["forward_policy"] = ""  # follow -ns-rotate
    if "forward_failover_rcodes" in fields:
        try:
            fields["forward_failover_rcodes"] = parse_rcodes(fields["forward_failover_rcodes"])
        except (ValueError, dns.exception.DNSException) as exc:
            raise click.BadParameter(str(exc), param_hint="--forward-failover") from None
    if "stub_domains" in fields:
        stubs = []
        for value in fields["stub_domains"]:
            for item in value.split():
                try:
                    stubs.append(parse_stub_domain(item))
                except (ValueError, dns.exception.DNSException) as exc:
                    raise click.BadParameter(f"{item!r}: {exc}", param_hint="--stub-domain") from None
        fields["stub_domains"] = tuple(stubs)
    if fields.get("hosts_file") is None:
        fields["hosts_file"] = ""
    return fields
