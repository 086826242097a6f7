"""How big and how fast is the skydns mirror (skydns.store) at a given cluster size?

Builds the etcd keys kube2sky writes for N ClusterIP services and M headless services with
E endpoints each, loads them into a store page by page as skydns does after a Range read,
and prints: the RSS of a skydns-like process before and after the load, the bytes per key
the store holds (tracemalloc, and where they are), the load's CPU and wall time, and the
cost of find() for typical names. No etcd, no sockets: only the store.

    .venv/bin/python bench/mirror_memory.py                      # 10k services + 100k endpoints
    .venv/bin/python bench/mirror_memory.py --services 1000 --headless 100 --endpoints 10

Keys per service, kube2sky's layout (S = <svc>.<ns>.svc.cluster.local., L = <svc>.<ns>.cluster.local.):
ClusterIP: A at S, SRV _http._tcp.S, PTR of the ClusterIP, the legacy alias at L (4 keys).
Headless: per endpoint an A at <ep>.S, an SRV _pg._tcp.S -> <ep>.S and a PTR (3 keys); one
legacy alias at L. Leaf labels are 32-bit hex like kube2sky's (crc32 here: the same sizes,
faster to make than FNV in Python). Values are kube2sky's compact JSON.

Asserts nothing; the numbers depend on the machine (see bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import marshal
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import timeit
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def generate(services: int, headless: int, endpoints: int, namespaces: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) in etcd order (sorted by key bytes, as a Range read returns them)."""
    from skydns import msg

    zone = "cluster.local."
    items: list[tuple[bytes, bytes]] = []

    def record(name: str, host: str, port: int = 0) -> None:
        value = msg.encode(msg.Service(host=host, port=port, priority=10, weight=10, ttl=30)).encode()
        items.append((f"{msg.name_to_key(name)}/{zlib.crc32(value):x}".encode(), value))

    def ptr(ip: str, host: str) -> None:
        value = msg.encode(msg.Service(host=host, priority=10, weight=10, ttl=30)).encode()
        items.append((f"{msg.ip_to_reverse_key(ip)}/{zlib.crc32(value):x}".encode(), value))

    for n in range(services):
        ns = f"ns{n % namespaces}"
        svc = f"svc{n}.{ns}.svc.{zone}"
        ip = f"10.96.{n // 256 % 256}.{n % 256}"
        record(svc, ip)
        record(f"_http._tcp.{svc}", svc, 80)
        ptr(ip, svc)
        record(f"svc{n}.{ns}.{zone}", svc)
    count = 0
    for h in range(headless):
        ns = f"ns{h % namespaces}"
        svc = f"db{h}.{ns}.svc.{zone}"
        for _ in range(endpoints):
            count += 1
            ip = f"10.{64 + count // 65536}.{count // 256 % 256}.{count % 256}"
            name = f"{ip.replace('.', '-')}.{svc}"
            record(name, ip)
            record(f"_pg._tcp.{svc}", name, 5432)
            ptr(ip, name)
        record(f"db{h}.{ns}.{zone}", svc)
    items.sort()
    return items


def measure(path: str, page: int) -> None:
    """The child process: a skydns-like process (skydns.app imported) loading the pages."""
    import tracemalloc

    from skydns import app, msg, store  # noqa: F401 - app: the imports of a real skydns

    gc.collect()
    base = rss_kib()

    def pages():
        with open(path, "rb") as f:
            while True:
                try:
                    yield marshal.load(f)
                except EOFError:
                    return

    def load(view: store.Store) -> int:
        loading = view.begin_replace()
        for chunk in pages():
            loading.add(chunk)
        view.finish_replace(loading, 1)
        return loading.read

    view = store.Store()
    cpu, wall = time.process_time(), time.perf_counter()
    keys = load(view)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.collect()
    after = rss_kib()
    print(f"keys: {keys:,} (page {page})")
    print(f"RSS: empty process (python + skydns imports) {base / 1024:.1f} MiB; "
          f"after the load {after / 1024:.1f} MiB (+{(after - base) / 1024:.1f} MiB, "
          f"{(after - base) * 1024 / max(keys, 1):.0f} B/key)")
    print(f"load: {cpu:.2f} s CPU, {wall:.2f} s wall ({keys / max(wall, 1e-9):,.0f} keys/s)")

    table = view._t
    paths = sum(len(k) for k in table.keys)
    hosts = sum(len(h) for h in table.hosts)
    shapes = sum(s.itemsize * len(s) for s in table.shapes)
    print(f"table: {len(table.first):,} blocks; path characters {paths / keys:.1f} B/key, "
          f"host characters {hosts / keys:.1f} B/key, shape numbers {shapes / keys:.1f} B/key, "
          f"{len(table.shape_ids)} distinct shapes, {len(table.spelling)} spellings, {len(table.odd)} odd hosts")

    del view, table
    gc.collect()
    tracemalloc.start()
    view = store.Store()
    load(view)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    print(f"tracemalloc: the store holds {held / 2**20:.1f} MiB ({held / max(keys, 1):.0f} B/key); "
          f"peak while loading {peak / 2**20:.1f} MiB")
    tracemalloc.stop()

    print("find() (CPU per call, best of 3 x 200):")
    names = [
        ("headless service, A (100 addresses)", "db5.ns5.svc.cluster.local."),
        ("headless SRV (100 targets)", "_pg._tcp.db5.ns5.svc.cluster.local."),
        ("one endpoint", "10-64-2-1.db5.ns5.svc.cluster.local."),
        ("ClusterIP service", "svc77.ns77.svc.cluster.local."),
        ("miss (NXDOMAIN)", "nope.ns5.svc.cluster.local."),
        ("PTR", "1.2.64.10.in-addr.arpa."),
        ("wildcard *.ns5", "*.ns5.svc.cluster.local."),
    ]
    for label, name in names:
        segments = tuple(reversed(msg.labels(name)))
        found = view.find(segments, limit=1000)
        best = min(timeit.repeat(lambda: view.find(segments, limit=1000), number=200, repeat=3,
                                 timer=time.process_time)) / 200
        print(f"  {label:38s} {name:40s} {len(found):5d} records {best * 1e6:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000, help="ClusterIP services")
    parser.add_argument("--headless", type=int, default=1_000, help="headless services")
    parser.add_argument("--endpoints", type=int, default=100, help="endpoints per headless service")
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--page", type=int, default=2000, help="keys per Range page (skydns --etcd-page-size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.page)
        return
    t0 = time.perf_counter()
    items = generate(args.services, args.headless, args.endpoints, args.namespaces)
    print(f"generated {len(items):,} keys in {time.perf_counter() - t0:.1f} s "
          f"({args.services} ClusterIP + {args.headless} headless x {args.endpoints} endpoints, "
          f"{args.namespaces} namespaces); Python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pages")
        with open(path, "wb") as f:
            for start in range(0, len(items), args.page):
                marshal.dump(items[start:start + args.page], f)
        del items
        # A fresh process, so that its RSS holds only what a skydns process would.
        subprocess.run([sys.executable, __file__, "--child", path, "--page", str(args.page)], check=True)


if __name__ == "__main__":
    main()
