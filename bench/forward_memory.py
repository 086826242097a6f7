"""How much memory does skydns give to forwarded answers when an upstream lies big?

A hostile upstream on 127.0.0.1 answers every name with a TXT RRset of 200 strings, about 50 KB
(TC over UDP, so the forwarder asks again over TCP, whole over TCP), with a TTL of an hour. A
skydns forwarding to it (a private etcd, no records) is asked for --names distinct names over
UDP, one at a time; its VmRSS / VmHWM is printed every 1,000 names. Each answer is cached until
the byte budget says no more (skydns --cache-mib, skydns/fwdcache.py rule 4); without a byte
budget only --cache-size (10,000 entries) would bound it.

    .venv/bin/python bench/forward_memory.py                 # 3,000 names
    .venv/bin/python bench/forward_memory.py --names 10000 -- --cache-mib 32

Asserts nothing (see bench/README.md, "Sixth round").
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import socket
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rrset  # noqa: E402

STRINGS = 200  # TXT strings per answer, 250 bytes each


def _answer(data: bytes, tcp: bool) -> bytes:
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    if not tcp:
        reply.flags |= dns.flags.TC
        return reply.to_wire()
    texts = [f'"{i:03d}' + "x" * 246 + '"' for i in range(STRINGS)]
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 3600, "IN", "TXT", *texts))
    return reply.to_wire(max_size=65535)


async def _upstream(port: int) -> None:
    """The hostile upstream (run in a child process: ``--upstream PORT``)."""
    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:
            self.transport.sendto(_answer(data, False), addr)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                out = _answer(await reader.readexactly(size), True)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
    await asyncio.start_server(tcp, "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=3000, help="distinct names asked")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("skydns_args", nargs="*", help="extra skydns flags (after --)")
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(_upstream(args.upstream))
        return
    from scale import rss
    from tests import procs, skydnsproc

    port = procs.free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(port)], stdout=subprocess.PIPE)
    etcd = procs.Etcd()
    server = None
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()
        etcd.start()
        server = skydnsproc.Skydns(etcd.url, *args.skydns_args, nameservers=f"127.0.0.1:{port}", timeout=5.0)
        server.wait_serving()
        flags = " ".join(args.skydns_args) or "(default flags)"
        print(f"skydns {flags}: rss/peak MiB {rss(server.proc.pid)} before", flush=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            for i in range(args.names):
                sock.send(dns.message.make_query(f"n{i}.evil.example.", "TXT").to_wire())
                sock.recv(65535)
                if (i + 1) % 1000 == 0 or i + 1 == args.names:
                    print(f"{i + 1} names: rss/peak MiB {rss(server.proc.pid)}", flush=True)
    finally:
        if server is not None:
            server.stop()
        etcd.close()
        upstream.kill()


if __name__ == "__main__":
    main()
