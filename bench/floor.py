#!/usr/bin/env python3
"""The floor of a Python DNS server: skydns's UDP path and one dict lookup, nothing else.

bench/run.py measures this next to skydns and NSD (configuration "floor") so that the CPU per
query of skydns can be split into what any Python server with the same UDP path pays (the
event loop, the system calls, the kernel's receive and send) and what skydns adds on a cache
hit.

Rules:
1. An answer is built once per distinct query (the bytes after the ID) with dnspython, from the
   same records bench/run.py loads into etcd: A for a known name, NODATA for another type of a
   known name, NXDOMAIN otherwise, authoritative, with the SOA in negative answers. From then
   on the query costs a dict lookup and the ID copied in, like skydns's exact cache (transport
   rule 3a) without its metrics, invalidation, serial patching or round robin.
2. UDP only, one process, 127.0.0.1. No EDNS handling beyond what dnspython does on the first
   answer; the benchmark's queries have none.
3. The UDP path is skydns's default: batches of datagrams per system call
   (``skydns.udpbatch``, on uvloop) where that is available; with ``--udp-batch 0``, or where
   it is not, uvloop's datagram transport, one datagram per call.
4. Not a DNS server for any other use: no TCP, no truncation, no forwarding.

Usage (bench/run.py starts it): floor.py PORT RECORDS [--udp-batch N]
"""

from __future__ import annotations

import asyncio
import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

import run  # the records (names, addresses, domain, TTL) of the benchmark; puts the repo on sys.path

from skydns import udpbatch  # noqa: E402 - after run.py's sys.path

try:
    import uvloop
except ImportError:  # pragma: no cover - skydns's dependencies include it
    uvloop = None


def answers(count: int):
    """A function from a query's bytes to its answer's bytes after the ID (rule 1)."""
    addresses = {name.lower(): run.address(i) for i, name in enumerate(run.names(count))}
    soa = dns.rrset.from_text(run.DOMAIN, 30, "IN", "SOA",
                              f"ns.dns.{run.DOMAIN} hostmaster.{run.DOMAIN} 1 3600 600 86400 30")
    tails: dict[bytes, bytes] = {}

    def build(data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        if name not in addresses:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.authority.append(soa)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text(question.name, run.TTL, "IN", "A", addresses[name]))
        else:
            reply.authority.append(soa)
        return reply.to_wire()[2:]

    def answer(data: bytes) -> bytes:
        tail = tails.get(data[2:])
        if tail is None:
            tail = tails[data[2:]] = build(data)
        return data[:2] + tail

    answer.tails = tails  # type: ignore[attr-defined] - for the batched path (rule 3)
    return answer


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, answer) -> None:
        self.answer = answer
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            out = self.answer(data)
        except Exception:  # noqa: BLE001 - a bad packet is dropped
            return
        self.transport.sendto(out, addr)


def _safe(answer):
    """answer, with a bad packet dropped (None) instead of raising."""
    def safe(data: bytes) -> bytes | None:
        try:
            return answer(data)
        except Exception:  # noqa: BLE001 - a bad packet is dropped
            return None
    return safe


async def serve(port: int, count: int, batch: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as skydns's --udp-rcvbuf
    sock.bind(("127.0.0.1", port))
    if batch and udpbatch.available():
        answer = answers(count)
        tails = answer.tails
        udpbatch.Batcher(sock, lambda keys: [tails.get(key) for key in keys], _safe(answer), lambda reason: None,
                         batch).start()
    else:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: _Protocol(answers(count)), sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    batch = int(sys.argv[4]) if sys.argv[3:4] == ["--udp-batch"] else udpbatch.SIZE
    if uvloop is not None:
        uvloop.run(serve(port, count, batch))
    else:
        asyncio.run(serve(port, count, batch))


if __name__ == "__main__":
    main()
