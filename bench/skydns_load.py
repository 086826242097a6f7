"""How long does skydns take to load a large etcd, and how much memory does it need?

A private etcd (the pod's flags, as bench/scale.py starts it) is filled with the keys kube2sky
writes for a cluster (bench/mirror_memory.py's generator: N ClusterIP services, M headless
services with E endpoints each, plus the dns-version record), then ``python -m skydns`` is
started against it ``--runs`` times and each run measures:

  start         skydns start -> first correct answer for a ClusterIP name (wall seconds and the
                process's CPU seconds at that moment; the CPU includes the interpreter's start
                and imports), and the CPU seconds etcd spent meanwhile serving the Range pages
                (etcd_cpu_s: etcd shares the cores with skydns, here as on a pod's node)
  load          the mirror's load alone: from the log line of the first Range request to the
                "loaded" line (wall), as skydns logs it
  rss           VmRSS after the load settled, and VmHWM (the peak)
  relist        etcd restarted under the running skydns: it relists (rule 3 of
                skydns/etcdwatch.py) and builds the new snapshot aside while the old one keeps
                answering; the time to the second "loaded" line (skydns's and etcd's CPU
                seconds meanwhile), and VmHWM after it (both snapshots alive at once at the swap)

    .venv/bin/python bench/skydns_load.py                     # 9k ClusterIP + 1k headless x 100 = 337,001 keys
    .venv/bin/python bench/skydns_load.py --services 900 --headless 100 --endpoints 10
    .venv/bin/python bench/skydns_load.py --data-dir /tmp/skydns-load-etcd   # keep etcd's data between runs
    .venv/bin/python bench/skydns_load.py --bytecode    # imports from compiled bytecode, as in the image

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
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import mirror_memory  # noqa: E402 - after the path tweak
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


def one_run(etcd: BenchEtcd, name: str, want: str, relist: bool) -> dict:
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
    etcd = BenchEtcd(data_dir=args.data_dir).start()
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
        runs = []
        for i in range(args.runs):
            run = one_run(etcd, name, "10.96.0.0", relist=not args.no_relist)
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
