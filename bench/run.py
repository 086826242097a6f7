#!/usr/bin/env python3
"""skydns hot-path benchmark: queries per second with the answer cache vs dnspython on every packet.

Starts a private etcd and skydns on 127.0.0.1 (free ports, temporary data dir), loads N
records, then for each configuration starts skydns, warms it up and runs a UDP load generator
for a fixed time:

  cache     the default: cached encoded answers, ID and qname case patched (DESIGN section 5)
  nocache   --answer-cache-size=0: dnspython parses and renders every packet (the reference)
  workers   --workers=2 with the cache (only with --workers-run)

The load generator is plain asyncio on raw sockets (no dnspython per packet): pre-built queries,
a fixed window of queries in flight per client process, lost packets re-sent after 1 s. It runs in
--clients processes so it is less likely to be the bottleneck; on a small machine it competes
with the server for CPU, so compare the ratios, not the absolute numbers. dnsperf is run too
when it is installed.

Bounded in time (about 6 s per configuration plus start-up; well under 60 s with the defaults),
loopback only. Not run by the tests. Usage:

    .venv/bin/python bench/run.py [--records 1000] [--seconds 5] [--clients 2] [--window 64]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402 - the repo's etcd runner

DOMAIN = "cluster.local."


def names(count: int) -> list[str]:
    return [f"svc{i}.ns{i % 10}.svc.{DOMAIN}" for i in range(count)]


def key(name: str, prefix: str = "skydns") -> str:
    return "/" + prefix + "/" + "/".join(reversed(name.rstrip(".").split(".")))


def load_records(etcd: procs.Etcd, count: int) -> None:
    """Write count A records with etcdctl txn batches (fast: one process per 500 keys)."""
    all_names = names(count)
    for start in range(0, count, 500):
        ops = [f"put {key(n)} {{\"host\":\"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}\"}}"
               for i, n in enumerate(all_names[start:start + 500], start)]
        script = "\n".join(["", *ops, "", ""]) + "\n"  # no compares, success ops, no failure ops
        subprocess.run(["etcdctl", "--endpoints", etcd.url, "txn"], input=script.encode(), check=True,
                       capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30)


def query_packet(name: str, qid: int) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.rstrip(".").split(".")) + b"\x00"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"


# -- load generator (one process) ------------------------------------------------------------


class _Client(asyncio.DatagramProtocol):
    def __init__(self, packets: list[bytes], window: int) -> None:
        self.packets = packets
        self.window = window
        self.inflight: dict[int, float] = {}
        self.answered = 0
        self.errors = 0
        self.next = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.counting = False

    def connection_made(self, transport):
        self.transport = transport

    def send_one(self) -> None:
        qid = self.next & 0xFFFF
        self.next += 1
        if qid in self.inflight:
            return
        packet = self.packets[self.next % len(self.packets)]
        self.inflight[qid] = time.monotonic()
        self.transport.sendto(qid.to_bytes(2, "big") + packet[2:])

    def datagram_received(self, data, addr):
        qid = int.from_bytes(data[:2], "big")
        if self.inflight.pop(qid, None) is None:
            return
        if self.counting:
            if data[3] & 0x0F:
                self.errors += 1
            self.answered += 1
        self.send_one()

    def expire(self) -> None:
        now = time.monotonic()
        for qid, sent in list(self.inflight.items()):
            if now - sent > 1.0:
                del self.inflight[qid]
        while len(self.inflight) < self.window:
            self.send_one()


async def _generate(host: str, port: int, qnames: list[str], window: int, warmup: float, seconds: float) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    packets = [query_packet(n, 0) for n in qnames]
    random.shuffle(packets)
    _, client = await loop.create_datagram_endpoint(lambda: _Client(packets, window), remote_addr=(host, port))
    client.expire()
    end_warmup = time.monotonic() + warmup
    while time.monotonic() < end_warmup:
        await asyncio.sleep(0.1)
        client.expire()
    client.counting = True
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.1)
        client.expire()
    client.counting = False
    client.transport.close()
    return client.answered, client.errors


def _client_process(args: tuple, out: multiprocessing.Queue) -> None:
    try:
        import uvloop
        runner_factory = uvloop.new_event_loop
    except ImportError:
        runner_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        out.put(runner.run(_generate(*args)))


def measure(port: int, qnames: list[str], clients: int, window: int, warmup: float, seconds: float) -> tuple[float, int]:
    """Answered queries per second summed over client processes, and the error answers."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_client_process, args=(("127.0.0.1", port, qnames, window, warmup, seconds), out))
               for _ in range(clients)]
    for w in workers:
        w.start()
    results = [out.get(timeout=warmup + seconds + 30) for _ in workers]
    for w in workers:
        w.join(5)
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results)


# -- the server under test ---------------------------------------------------------------------


def start_skydns(etcd: procs.Etcd, *extra: str) -> tuple[subprocess.Popen, int]:
    port = procs.free_port()
    http_port = procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "skydns", f"-addr=127.0.0.1:{port}", f"-machines={etcd.url}",
         f"-domain={DOMAIN}", "-nameservers=", "--lameduck=0", "--log-level=warning",
         f"--http-addr=127.0.0.1:{http_port}", *extra],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if not k.startswith(("SKYDNS_", "ETCD_"))})

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"skydns exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    procs.wait_until(ready, timeout=30, what="skydns ready")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def dnsperf(port: int, qnames: list[str], seconds: float) -> float | None:
    if not shutil.which("dnsperf"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(f"{n} A\n" for n in qnames))
        path = fh.name
    try:
        out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", path, "-l", str(seconds),
                              "-c", "4", "-Q", "1000000"], capture_output=True, text=True, timeout=seconds + 30)
    finally:
        os.unlink(path)
    for line in out.stdout.splitlines():
        if "Queries per second" in line:
            return float(line.split(":")[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="A records loaded into etcd")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per configuration, seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before, seconds")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--window", type=int, default=64, help="queries in flight per client")
    parser.add_argument("--workers-run", action="store_true", help="also measure --workers=2 with the cache")
    args = parser.parse_args()

    qnames = names(args.records)
    configs = [("cache", ()), ("nocache", ("--answer-cache-size=0",))]
    if args.workers_run:
        configs.append(("workers=2", ("--workers=2",)))
    print(f"bench: {args.records} records, {args.seconds}s per run, {args.clients} client processes x "
          f"{args.window} in flight, {os.cpu_count()} CPUs", flush=True)
    results: dict[str, float] = {}
    with procs.running_etcd() as etcd:
        t0 = time.monotonic()
        load_records(etcd, args.records)
        print(f"loaded {args.records} records in {time.monotonic() - t0:.1f}s", flush=True)
        for label, extra in configs:
            proc, port = start_skydns(etcd, *extra)
            try:
                qps, errors = measure(port, qnames, args.clients, args.window, args.warmup, args.seconds)
                results[label] = qps
                line = f"{label:10s} {qps:10.0f} qps (python load generator, {errors} error answers)"
                perf = dnsperf(port, qnames, min(args.seconds, 5.0))
                if perf is not None:
                    results[label + " dnsperf"] = perf
                    line += f"; dnsperf {perf:.0f} qps"
                print(line, flush=True)
            finally:
                stop(proc)
    if results.get("nocache"):
        for label, qps in results.items():
            if label != "nocache" and "dnsperf" not in label:
                print(f"ratio {label}/nocache: {qps / results['nocache']:.1f}x")
        if results.get("cache dnsperf") and results.get("nocache dnsperf"):
            print(f"ratio dnsperf cache/nocache: {results['cache dnsperf'] / results['nocache dnsperf']:.1f}x")


if __name__ == "__main__":
    main()
