"""How long does skydns take to load a large etcd, and how much memory does it need?

A private etcd (the pod's flags and Go memory settings, as bench/scale.py starts it) is filled
with the keys kube2sky writes for a cluster (bench/mirror_memory.py's generator: N ClusterIP
services, M headless services with E endpoints each, plus the dns-version record), then
``python -m skydns`` is started against it ``--runs`` times and each run measures:

  start         skydns start -> first correct answer for a ClusterIP name (wall seconds and the
                process's CPU seconds at that moment; the CPU includes the interpreter's start
                and imports), and the CPU seconds etcd spent meanwhile serving the Range pages
                (etcd_cpu_s: etcd shares the cores with skydns, here as on a pod's node)
  load          the mirror's load alone: from the log line of the first Range request to the
                "loaded" line (wall), as skydns logs it
  rss           VmRSS after the load settled, and VmHWM (the peak)
  scan          with --scan, every name asked once after the load, as a cluster's pods may:
                A and AAAA of every ClusterIP service and the PTR of its address (UDP), A of
                every headless service (UDP with EDNS 1232, and TCP) and its SRV (TCP): then
                every cache of skydns is full (the answer cache's byte budget, the memos of
                the miss path); the CPU per query and VmRSS/VmHWM after it
  relist        etcd restarted under the running skydns: it relists (rule 3 of
                skydns/etcdwatch.py) and builds the new snapshot aside while the old one keeps
                answering; the time to the second "loaded" line (skydns's and etcd's CPU
                seconds meanwhile), and VmHWM after it (both snapshots alive at once at the swap)

    .venv/bin/python bench/skydns_load.py                     # 9k ClusterIP + 1k headless x 100 = 337,001 keys
    .venv/bin/python bench/skydns_load.py --services 900 --headless 100 --endpoints 10
    .venv/bin/python bench/skydns_load.py --data-dir /tmp/skydns-load-etcd   # keep etcd's data between runs
    .venv/bin/python bench/skydns_load.py --bytecode    # imports from compiled bytecode, as in the image
    .venv/bin/python bench/skydns_load.py --runs 1 --scan    # and the memory with every cache full

``--bytecode``: the image compiles every module at build time (Dockerfile: compileall), but a
checkout run with PYTHONDONTWRITEBYTECODE=1 compiles skydns's modules from source at every start
(about 0.2 s of the start here); with the flag skydns runs with a bytecode cache
(PYTHONPYCACHEPREFIX in a temporary directory, written by one import before the runs).

Prints one JSON object per run and a summary. Asserts nothing (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import pathlib
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import dns.message

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import mirror_memory  # noqa: E402 - after the path tweak
from deploy import sizing  # noqa: E402
from scale import BenchEtcd, cpu_seconds, rss  # noqa: E402
from tests import procs, skydnsproc  # noqa: E402

ZONE = "cluster.local."
VERSION_KEY = b"/skydns/local/cluster/dns-version"


async def fill(url: str, items: list[tuple[bytes, bytes]], per_txn: int = 128) -> None:
    """Write every item, transactions of per_txn puts, a few in flight."""
    import aetcd
    from aetcd import rpc

    host, port = url.removeprefix("http://").rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), options={"grpc.max_send_message_length": -1})
    await client.connect()
    try:
        sem = asyncio.Semaphore(8)

        async def txn(chunk: list[tuple[bytes, bytes]]) -> None:
            async with sem:
                ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in chunk]
                await client.kvstub.Txn(rpc.TxnRequest(success=ops), timeout=60)

        await asyncio.gather(*(txn(items[i:i + per_txn]) for i in range(0, len(items), per_txn)))
    finally:
        await client.close()


def count_keys(etcd: procs.Etcd) -> int:
    return int(json.loads(etcd.ctl("get", "/skydns/", "--prefix", "--limit", "1", "-w", "json")).get("count", 0))


def wait_loaded(server: skydnsproc.Skydns, count: int, timeout: float = 600) -> float:
    """Wall time (monotonic) when the log shows the count-th 'etcd: loaded' line."""
    procs.wait_until(lambda: server.log().count("etcd: loaded") >= count, timeout=timeout, interval=0.02,
                     what=f"skydns load #{count}")
    return time.monotonic()


def scan_queries(services: int, headless: int, namespaces: int) -> list[tuple[bytes, str]]:
    """(query bytes, "udp"/"tcp") asking every name of mirror_memory.generate's cluster once."""
    out = []

    def ask(name: str, rdtype: str, proto: str, edns: bool = False) -> None:
        query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=1232)
        out.append((query.to_wire(), proto))

    for n in range(services):
        name = f"svc{n}.ns{n % namespaces}.svc.{ZONE}"
        ask(name, "A", "udp")
        ask(name, "AAAA", "udp")
        ask(f"{n % 256}.{n // 256 % 256}.96.10.in-addr.arpa.", "PTR", "udp")
    for h in range(headless):
        name = f"db{h}.ns{h % namespaces}.svc.{ZONE}"
        ask(name, "A", "udp", edns=True)
        ask(name, "A", "tcp")
        ask(f"_pg._tcp.{name}", "SRV", "tcp")
    return out


def scan(port: int, queries: list[tuple[bytes, str]]) -> int:
    """Send every query and read its answer, one at a time; the number answered."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as tcp:
        udp.settimeout(10)
        udp.connect(("127.0.0.1", port))
        stream = tcp.makefile("rb")
        for data, proto in queries:
            if proto == "udp":
                udp.send(data)
                answered += len(udp.recv(65535)) > 12
            else:
                tcp.sendall(struct.pack("!H", len(data)) + data)
                size = struct.unpack("!H", stream.read(2))[0]
                answered += len(stream.read(size)) > 12
    return answered


def one_run(etcd: BenchEtcd, name: str, want: str, relist: bool,
            queries: list[tuple[bytes, str]] | None = None) -> dict:
    out: dict = {"load_average": round(os.getloadavg()[0], 2)}
    etcd_cpu = cpu_seconds(etcd.proc.pid)
    started = time.monotonic()
    server = skydnsproc.Skydns(etcd.url, "--max-answers=1000", timeout=1.0)
    try:
        while True:
            if not server.alive():
                raise RuntimeError(f"skydns exited: {server.log()[-2000:]}")
            try:
                if want in skydnsproc.addrs(server.udp(name)):
                    break
            except Exception:  # noqa: BLE001 - not up yet, timeout
                pass
            time.sleep(0.02)  # as bench/scale.py polls: SERVFAIL answers cost skydns CPU too
        out["start_s"] = round(time.monotonic() - started, 3)
        out["start_cpu_s"] = round(cpu_seconds(server.proc.pid), 3)
        out["etcd_cpu_s"] = round(cpu_seconds(etcd.proc.pid) - etcd_cpu, 3)
        time.sleep(1.0)
        out["rss_mib"], out["peak_mib"] = rss(server.proc.pid)
        if queries:
            cpu, t = cpu_seconds(server.proc.pid), time.monotonic()
            out["scan_answered"] = scan(server.port, queries)
            out["scan_s"] = round(time.monotonic() - t, 2)
            out["scan_cpu_us_per_query"] = round((cpu_seconds(server.proc.pid) - cpu) * 1e6 / len(queries), 1)
            time.sleep(1.0)
            out["rss_after_scan_mib"], out["peak_after_scan_mib"] = rss(server.proc.pid)
        if relist:
            cpu = cpu_seconds(server.proc.pid)
            etcd.stop()
            etcd.start()
            t = time.monotonic()
            etcd_cpu = cpu_seconds(etcd.proc.pid)
            wait_loaded(server, 2)
            out["relist_s"] = round(time.monotonic() - t, 3)
            out["relist_cpu_s"] = round(cpu_seconds(server.proc.pid) - cpu, 3)
            out["relist_etcd_cpu_s"] = round(cpu_seconds(etcd.proc.pid) - etcd_cpu, 3)
            time.sleep(1.0)
            out["rss_after_relist_mib"], out["peak_after_relist_mib"] = rss(server.proc.pid)
        lines = [line for line in server.log().splitlines() if "etcd: loaded" in line]
        out["log"] = lines[:1]
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=9_000, help="ClusterIP services")
    parser.add_argument("--headless", type=int, default=1_000, help="headless services")
    parser.add_argument("--endpoints", type=int, default=100, help="endpoints per headless service")
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-relist", action="store_true", help="skip the relist after an etcd restart")
    parser.add_argument("--scan", action="store_true", help="ask every name once after the load (see above)")
    parser.add_argument("--data-dir", help="etcd's data directory, kept (and reused when it holds the same keys)")
    parser.add_argument("--json", help="write the runs to this file")
    parser.add_argument("--bytecode", action="store_true",
                        help="run skydns from compiled bytecode, as the image does (see above)")
    args = parser.parse_args()
    if args.bytecode:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = cache = tempfile.mkdtemp(prefix="kube-skydns-bench-pyc-")
        atexit.register(shutil.rmtree, cache, True)
        subprocess.run([sys.executable, "-c", "import skydns.cli, skydns.app, skydns.etcdwatch, skydns.store"],
                       check=True, cwd=ROOT)

    items = mirror_memory.generate(args.services, args.headless, args.endpoints, args.namespaces)
    items.append((VERSION_KEY, b'{"text":"1.0.0","ttl":30}'))
    if args.data_dir:
        os.makedirs(args.data_dir, exist_ok=True)
    # etcd with the pod's Go memory settings for this cluster's size, as bench/scale.py runs it
    go_env = sizing.etcd_go_env(args.services + args.headless, args.headless * args.endpoints)
    etcd = BenchEtcd(data_dir=args.data_dir, env=go_env).start()
    try:
        have = count_keys(etcd)
        if have != len(items):
            if have:
                etcd.ctl("del", "/skydns/", "--prefix")
            t = time.monotonic()
            asyncio.run(fill(etcd.url, items))
            print(f"wrote {len(items):,} keys in {time.monotonic() - t:.1f} s", flush=True)
        del items
        name = f"svc0.ns0.svc.{ZONE}"
        queries = scan_queries(args.services, args.headless, args.namespaces) if args.scan else None
        runs = []
        for i in range(args.runs):
            run = one_run(etcd, name, "10.96.0.0", relist=not args.no_relist, queries=queries)
            run["keys"] = have if have else count_keys(etcd)
            print(json.dumps(run), flush=True)
            runs.append(run)
        summary = {key: statistics.median(r[key] for r in runs)
                   for key in runs[0] if isinstance(runs[0][key], (int, float))}
        print("median:", json.dumps(summary), flush=True)
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps({"runs": runs, "median": summary}, indent=1))
    finally:
        if args.data_dir:
            etcd.stop()
        else:
            etcd.close()


if __name__ == "__main__":
    main()
