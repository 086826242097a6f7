"""Small upstream DNS servers for tests: asyncio UDP+TCP on 127.0.0.1, misbehaving on purpose.

An Upstream runs in the test's event loop. `mode` picks the behaviour (see MODES); `queries`
records every question it received as (proto, name lower-case text, type mnemonic).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from skydns import settings

MODES = (
    "ok",              # A 192.0.2.1 (TTL 300) for any name, PTR upstream.example. for any PTR query;
                       # NXDOMAIN + SOA for names starting "nx"
    "timeout",         # never answers
    "servfail",        # SERVFAIL
    "refused",         # REFUSED
    "refused_noquestion",  # REFUSED with the question section dropped (some servers do that)
    "formerr",         # FORMERR (e.g. a server that does not understand EDNS)
    "wrong_id",        # right answer with ID + 1
    "wrong_question",  # right answer for another name
    "truncate",        # UDP: TC set, no records; TCP: the answer
    "nxdomain_public", # NXDOMAIN for every name (". NS" answered fine)
    "slow",            # like ok after `delay` seconds
    "forward",         # relays the query to `forward_to` (host, port) over UDP: a forwarding loop
    "liar",            # like ok, plus records nobody asked for: other names, names in cluster.local.,
                       # another type of the asked name, in every section
)


class Upstream:
    """One fake resolver on 127.0.0.1 (same port for UDP and TCP)."""

    def __init__(self, mode: str = "ok", delay: float = 0.0, ttl: int = 300, forward_to: tuple[str, int] | None = None,
                 address: str = "127.0.0.1") -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.delay = delay
        self.ttl = ttl
        self.forward_to = forward_to
        self.address = address
        self.queries: list[tuple[str, str, str]] = []
        self.answer_ip = "192.0.2.1"
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def upstream(self) -> settings.Upstream:
        return settings.Upstream(self.address, self.port)

    def names(self, qtype: str | None = None) -> list[str]:
        return [name for _, name, t in self.queries if qtype is None or t == qtype]

    async def start(self) -> "Upstream":
        loop = asyncio.get_running_loop()
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.address, 0))
            port = udp.getsockname()[1]
            try:
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.address, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        self.port = port
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        return self

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def __aenter__(self) -> "Upstream":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- behaviour -------------------------------------------------------------------------------

    async def reply_to(self, wire: bytes, proto: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        self.queries.append((proto, question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)))
        mode = self.mode
        if mode == "timeout":
            return None
        if mode == "forward":
            return await _relay(wire, self.forward_to)
        if mode == "slow":
            await asyncio.sleep(self.delay)
        reply = dns.message.make_response(query, recursion_available=True)
        is_root_ns = question.name == dns.name.root and question.rdtype == dns.rdatatype.NS
        if mode == "servfail":
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif mode in ("refused", "refused_noquestion"):
            reply.set_rcode(dns.rcode.REFUSED)
            if mode == "refused_noquestion":
                reply.question = []
        elif mode == "formerr":
            reply.set_rcode(dns.rcode.FORMERR)
        elif is_root_ns:
            reply.answer.append(dns.rrset.from_text(".", 3600, "IN", "NS", "a.root-servers.net."))
        elif mode == "nxdomain_public" or question.name.labels[0].startswith(b"nx"):
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.authority.append(dns.rrset.from_text(
                ".", 900, "IN", "SOA", "a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 60"))
        elif mode == "truncate" and proto == "udp":
            reply.flags |= dns.flags.TC
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "A", self.answer_ip))
        elif question.rdtype == dns.rdatatype.PTR:
            reply.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "PTR", "upstream.example."))
        if mode == "liar" and not is_root_ns:
            for section in (reply.answer, reply.authority, reply.additional):
                section.append(dns.rrset.from_text("victim.spoof.test.", self.ttl, "IN", "A", "6.6.6.6"))
                section.append(dns.rrset.from_text("web.default.svc.cluster.local.", self.ttl, "IN", "A", "6.6.6.6"))
            reply.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", "TXT", '"lie"'))
        if mode == "wrong_id":
            reply.id = (reply.id + 1) & 0xFFFF
        if mode == "wrong_question":
            reply.question = [dns.rrset.RRset(dns.name.from_text("other.example."), question.rdclass, question.rdtype)]
        return reply.to_wire()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            data = await self.reply_to(await reader.readexactly(length), "tcp")
            if data is not None:
                writer.write(struct.pack("!H", len(data)) + data)
                await writer.drain()
            else:
                await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Upstream) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.owner._tasks.add(task)
        task.add_done_callback(self.owner._tasks.discard)

    async def _answer(self, data: bytes, addr) -> None:
        reply = await self.owner.reply_to(data, "udp")
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


async def _relay(wire: bytes, target: tuple[str, int] | None) -> bytes | None:
    if target is None:
        return None
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.connect(target)
        await loop.sock_sendall(sock, wire)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)
    except (OSError, TimeoutError):
        return None
    finally:
        sock.close()


class Listener:
    """A stand-in for skydns's UDP listener: every query goes to forwarder.forward()."""

    def __init__(self, forwarder, address: str = "127.0.0.1") -> None:
        self.forwarder = forwarder
        self.address = address
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Listener":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _ForwardingUdp(self), local_addr=(self.address, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()


class _ForwardingUdp(asyncio.DatagramProtocol):
    def __init__(self, owner: Listener) -> None:
        self.owner = owner
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.owner._tasks.add(task)
        task.add_done_callback(self.owner._tasks.discard)

    async def _answer(self, data: bytes, addr) -> None:
        reply = await self.owner.forwarder.forward(dns.message.from_wire(data))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply.to_wire(), addr)


class Thread:
    """Fake upstreams served by an event loop in a background thread (for tests that run a
    real skydns process). Use as a context manager; `servers` are started Upstream objects."""

    def __init__(self, *servers: Upstream) -> None:
        import threading

        self.servers = servers
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-upstreams", daemon=True)

    def __enter__(self) -> "Thread":
        self._thread.start()
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def set_mode(self, server: Upstream, mode: str) -> None:
        self.loop.call_soon_threadsafe(setattr, server, "mode", mode)
