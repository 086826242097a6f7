#!/usr/bin/env python3
"""skydns hot-path benchmark: skydns (cache, nocache) against a C authoritative server, NSD,
on a static store and while etcd changes (--churn), with server CPU per answered query.

Starts a private etcd, skydns and NSD on 127.0.0.1 (free ports, temporary directories), all
serving the same N A records (svcN.nsM.svc.cluster.local., TTL 300), one server process per
configuration, checks a sample of the answers, warms them up and measures each for a fixed time:

  nsd        NSD, server-count 1 (one process answering, like skydns by default): the C baseline
  knot       Knot DNS (knotd), one UDP and one TCP worker thread: the second C reference, when
             installed (--no-knot skips it)
  floor      bench/floor.py: a dict of prebuilt answers behind skydns's UDP path (batches of
             datagrams per system call) and nothing else, the floor of a Python server on that
             path (--no-floor skips it)
  cache      skydns default: cached encoded answers, ID and qname case patched (DESIGN section 5)
  nocache    skydns --answer-cache-size=0: dnspython parses and renders every packet
  cache 1/call, floor 1/call
             skydns --udp-batch=0 and floor.py --udp-batch 0: one datagram per system call
             through uvloop's datagram transport, the path before batching (only with --unbatched)
  cache py-hits
             skydns --no-compiled-hits: the cached hits of a batch answered by the Python loop
             instead of the compiled one (skydns/_hits.c; only with --python-hits)
  nsd x2     NSD, server-count 2, reuseport               (only with --workers-run)
  workers=2  skydns --workers=2 with the cache, SO_REUSEPORT (only with --workers-run)

Query mixes (--mix): "a" asks each name's A record; "pod" sends what glibc's getaddrinfo in a
pod (ndots:5, search <ns>.svc.cluster.local svc.cluster.local cluster.local) sends for the short
name svcN.nsM: A and AAAA of svcN.nsM.default.svc.cluster.local (NXDOMAIN), then A (the
address) and AAAA (NODATA) of svcN.nsM.svc.cluster.local (bench/churn.py rule 5).

Churn (--churn R): besides the static store, every skydns configuration with a cache is also
measured while a separate writer process puts R values per second into etcd over one
keep-alive connection: "unrelated" writes one key no query reads, "names" writes the queried
names themselves in turn (each of N names changes every N/R seconds). The writes etcd
acknowledged during each measurement are counted and printed per second; at the start of each
churn phase the servers get no queries for --idle seconds, which gives their CPU per write
applied. NSD serves a zone file and is measured on the static store only.

CPU: utime+stime of each server process (and its children) from /proc over exactly the measured
interval, divided by the answered queries: microseconds of server CPU per answered query, the
figure that does not depend on how fast the load generator can ask. Printed per configuration
with its spread over rounds, and as ratios: each churn run to the static run of the same server
in the same rounds, and each configuration to NSD's CPU per query.

Honesty rules: before a configuration is measured, sample names are asked with dnspython and
must come back NOERROR, authoritative, with exactly the expected address (and with --mix pod
NXDOMAIN for the search-path names and NODATA for AAAA); a configuration that fails the check is
skipped, not measured. After each churn phase the last value written must be served. All
servers run side by side and are measured in --rounds interleaved rounds (every other round in
reverse order, phases too) so a change of background load hits all configurations alike. NSD
runs with minimal-responses (answer section only, like skydns) and with response rate limiting
off. Answered queries per second, answers with an unexpected rcode and lost queries are
reported for both load generators.

Load generators: the built-in one is plain asyncio on raw sockets (no dnspython per packet):
pre-built queries, a fixed window of queries in flight per client process, a query with no
answer after 1 s counted as lost and replaced; it runs in --clients processes. dnsperf is run
too when it is installed. On a small machine the load generator competes with the server for
CPU, so compare the ratios within one run, not absolute numbers across runs.

--miss runs only the in-process microbenchmark of a cache miss (bench/churn.py rule 6): the
cost of transport.Handler.handle for the first query of a name after its record changed.

Missing tools are skipped with a message: NSD (`apt-get install -y nsd`), Knot
(`apt-get install -y knot`), dnsperf (`apt-get install -y dnsperf`). Bounded in time (about
40 s with the defaults, 65 s with --workers-run, on 2 CPUs; --churn adds two phases,
--unbatched two configurations); loopback only; every process started is stopped at the end,
also on errors, Ctrl-C and SIGTERM. Not run by the tests. Usage:

    .venv/bin/python bench/run.py [--workers-run] [--unbatched] [--python-hits] [--records 1000] [--seconds 4] [--no-nsd] [--no-knot]
    .venv/bin/python bench/run.py --churn 100 --mix pod --rounds 3 --seconds 6
    .venv/bin/python bench/run.py --miss
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import churn  # noqa: E402
from skydns import msg  # noqa: E402
from tests import procs  # noqa: E402 - the repo's etcd runner

DOMAIN = "cluster.local."
TTL = 300  # skydns Settings.ttl default; the NSD zone uses the same
NSD_INSTALL = "apt-get install -y nsd"
KNOT_INSTALL = "apt-get install -y knot"
DNSPERF_INSTALL = "apt-get install -y dnsperf"


# -- the records, one list for etcd and for the zone file --------------------------------------


def names(count: int) -> list[str]:
    return [f"svc{i}.ns{i % 10}.svc.{DOMAIN}" for i in range(count)]


def address(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def load_records(etcd: procs.Etcd, count: int) -> None:
    """Write count A records with etcdctl txn batches (fast: one process per 500 keys)."""
    all_names = names(count)
    for start in range(0, count, 500):
        ops = [f"put {msg.name_to_key(n)} {{\"host\":\"{address(i)}\"}}"
               for i, n in enumerate(all_names[start:start + 500], start)]
        script = "\n".join(["", *ops, "", ""]) + "\n"  # no compares, success ops, no failure ops
        subprocess.run(["etcdctl", "--endpoints", etcd.url, "txn"], input=script.encode(), check=True,
                       capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30)


def zone_text(count: int) -> str:
    """The same records as a zone file for cluster.local. (SOA and NS are what NSD requires)."""
    origin = DOMAIN
    lines = [f"$ORIGIN {origin}", f"$TTL {TTL}",
             f"@ IN SOA ns.dns.{origin} hostmaster.{origin} 1 3600 600 86400 30",
             f"@ IN NS ns.dns.{origin}", "ns.dns IN A 127.0.0.1"]
    lines += [f"{n} IN A {address(i)}" for i, n in enumerate(names(count))]
    return "\n".join(lines) + "\n"


def other_address(i: int) -> str:
    """The second value the "names" churn gives name i (bench/churn.py rule 2)."""
    return f"10.{128 + i // 65536 % 128}.{i // 256 % 256}.{i % 256}"


def query_packet(name: str, qid: int, qtype: int = 1) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.rstrip(".").split(".")) + b"\x00"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!2H", qtype, 1)


# -- load generator (one process) ------------------------------------------------------------


class _Client(asyncio.DatagramProtocol):
    def __init__(self, packets: list[tuple[bytes, int]], window: int) -> None:
        self.packets = packets  # (query bytes, expected rcode)
        self.window = window
        self.inflight: dict[int, tuple[float, int]] = {}
        self.answered = 0
        self.errors = 0
        self.lost = 0
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
        packet, rcode = self.packets[self.next % len(self.packets)]
        self.inflight[qid] = (time.monotonic(), rcode)
        self.transport.sendto(qid.to_bytes(2, "big") + packet[2:])

    def datagram_received(self, data, addr):
        entry = self.inflight.pop(int.from_bytes(data[:2], "big"), None)
        if entry is None:
            return
        if self.counting:
            if data[3] & 0x0F != entry[1]:
                self.errors += 1
            self.answered += 1
        self.send_one()

    def error_received(self, exc):
        pass  # ICMP port unreachable while a server starts or stops: the query is counted lost

    def expire(self) -> None:
        now = time.monotonic()
        for qid, (sent, _) in list(self.inflight.items()):
            if now - sent > 1.0:
                del self.inflight[qid]
                if self.counting:
                    self.lost += 1
        while len(self.inflight) < self.window:
            self.send_one()


def _set_counting(client: _Client, value: bool) -> None:
    client.counting = value


async def _generate(host: str, port: int, queries: list[tuple[bytes, int]], window: int, start_at: float,
                    end_at: float) -> tuple[int, int, int]:
    """Ask from now on; count answers between start_at and end_at (time.monotonic, which is the
    same clock in every process, so the parent reads the server's CPU at the same moments)."""
    loop = asyncio.get_running_loop()
    packets = list(queries)
    random.shuffle(packets)
    _, client = await loop.create_datagram_endpoint(lambda: _Client(packets, window), remote_addr=(host, port))
    client.expire()
    loop.call_later(max(0.0, start_at - time.monotonic()), _set_counting, client, True)
    loop.call_later(max(0.0, end_at - time.monotonic()), _set_counting, client, False)
    while time.monotonic() < end_at:
        await asyncio.sleep(min(0.1, max(0.0, end_at - time.monotonic())))
        client.expire()
    client.counting = False
    client.transport.close()
    return client.answered, client.errors, client.lost


def _client_process(args: tuple, out: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C goes to the whole group
    try:
        import uvloop
        runner_factory = uvloop.new_event_loop
    except ImportError:
        runner_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        out.put(runner.run(_generate(*args)))


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    qps: float  # answered queries per second
    errors: int  # answers with an rcode other than the expected one
    lost: int  # queries without an answer
    answered: int = 0  # answered queries in the measured interval
    cpu: float | None = None  # server CPU seconds (utime+stime, with children) in that interval
    writes: float | None = None  # etcd writes per second acknowledged in that interval

    @property
    def cpu_us(self) -> float | None:
        """Server CPU per answered query, microseconds."""
        if self.cpu is None or not self.answered:
            return None
        return self.cpu / self.answered * 1e6


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One server under measurement."""

    port: int
    pid: int
    writer: churn.Writer | None = None  # the churn running while it is measured


class _Interval:
    """Server CPU and acknowledged etcd writes between begin() and end()."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def begin(self) -> None:
        self.cpu0 = churn.cpu_seconds(self.target.pid)
        self.w0 = self.target.writer.count if self.target.writer else 0
        self.t0 = time.monotonic()

    def end(self) -> tuple[float, float | None]:
        cpu = churn.cpu_seconds(self.target.pid) - self.cpu0
        elapsed = time.monotonic() - self.t0
        writes = (self.target.writer.count - self.w0) / elapsed if self.target.writer else None
        return cpu, writes


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def prime(port: int, packets: list[tuple[bytes, int]], window: int = 64, timeout: float = 2.0) -> int:
    """Ask every distinct query once, window by window, so that a cache holds all of them before the
    measurement (a time-based warm-up fills 4,000 pod-mix answers only partly when misses are slow);
    returns how many got no answer."""
    missing = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(timeout)
        for start in range(0, len(packets), window):
            batch = packets[start:start + window]
            for n, (packet, _) in enumerate(batch):
                sock.send(((start + n) & 0xFFFF).to_bytes(2, "big") + packet[2:])
            got = 0
            try:
                while got < len(batch):
                    sock.recv(65535)
                    got += 1
            except TimeoutError:
                missing += len(batch) - got
    return missing


def measure(target: Target, queries: list[tuple[bytes, int]], clients: int, window: int, warmup: float,
            seconds: float) -> Load:
    """The built-in load generator: answered queries per second summed over client processes,
    and the server's CPU over the same interval."""
    ctx = multiprocessing.get_context("fork")  # no threads here yet; much faster than spawn
    out = ctx.Queue()
    start_at = time.monotonic() + warmup
    end_at = start_at + seconds
    workers = [ctx.Process(target=_client_process,
                           args=(("127.0.0.1", target.port, queries, window, start_at, end_at), out))
               for _ in range(clients)]
    interval = _Interval(target)
    try:
        for w in workers:
            w.start()
        _sleep_until(start_at)
        interval.begin()
        _sleep_until(end_at)
        cpu, writes = interval.end()
        results = [out.get(timeout=warmup + seconds + 30) for _ in workers]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()
                w.join(5)
    answered = sum(r[0] for r in results)
    return Load(answered / seconds, sum(r[1] for r in results), sum(r[2] for r in results), answered, cpu, writes)


def dnsperf(target: Target, queries: list[churn.Query], seconds: float) -> Load | None:
    """dnsperf over the same queries, 4 sockets, no rate limit, 1 s timeout; None when it is not
    installed. The server's CPU is read just before dnsperf starts and just after it ends."""
    if not shutil.which("dnsperf"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("".join(f"{q.name} {dns.rdatatype.to_text(q.qtype)}\n" for q in queries))
        path = fh.name
    interval = _Interval(target)
    try:
        interval.begin()
        out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(target.port), "-d", path, "-l", str(seconds),
                              "-c", "4", "-Q", "1000000", "-t", "1"], capture_output=True, text=True,
                             timeout=seconds + 30)
        cpu, writes = interval.end()
    finally:
        os.unlink(path)
    fields: dict[str, str] = {}
    for line in out.stdout.splitlines():
        head, sep, tail = line.strip().partition(":")
        if sep:
            fields[head] = tail.strip()
    if "Queries per second" not in fields:
        print(f"  dnsperf gave no result (exit {out.returncode}): {out.stderr.strip()[-300:]}", flush=True)
        return None
    codes = fields.get("Response codes", "").replace(",", "").split()
    expected = {dns.rcode.to_text(q.rcode) for q in queries}
    ok = sum(int(codes[codes.index(code) + 1]) for code in expected if code in codes)
    completed = int(fields.get("Queries completed", "0").split()[0])
    lost = int(fields.get("Queries lost", "0").split()[0])
    return Load(float(fields["Queries per second"]), completed - ok, lost, completed, cpu, writes)


# -- the servers under test --------------------------------------------------------------------


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait(check, timeout: float, what: str) -> None:
    """Poll check() until true; its exceptions (a server that exited) end the wait at once."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _popen(argv: list[str]) -> subprocess.Popen:
    # Own session: Ctrl-C reaches only this script, which then stops the server in order.
    return subprocess.Popen(argv, cwd=ROOT, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("SKYDNS_", "ETCD_"))})


def start_skydns(etcd: procs.Etcd, *extra: str) -> tuple[subprocess.Popen, int]:
    port = procs.free_port()
    http_port = procs.free_port()
    proc = _popen([sys.executable, "-m", "skydns", f"-addr=127.0.0.1:{port}", f"-machines={etcd.url}",
                   f"-domain={DOMAIN}", "-nameservers=", "--lameduck=0", "--log-level=warning",
                   f"--http-addr=127.0.0.1:{http_port}", *extra])

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"skydns exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        _wait(ready, 30, "skydns ready")
    except BaseException:
        stop(proc)
        raise
    return proc, port


def start_floor(count: int, *extra: str) -> tuple[subprocess.Popen, int]:
    """bench/floor.py: skydns's UDP path and a dict of answers, the floor of a Python server."""
    port = procs.free_port()
    proc = _popen([sys.executable, str(ROOT / "bench" / "floor.py"), str(port), str(count), *extra])

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"floor.py exited with {proc.returncode}")
        try:
            dns.query.udp(dns.message.make_query(names(1)[0], "A"), "127.0.0.1", port=port, timeout=0.2)
            return True
        except dns.exception.Timeout:
            return False

    try:
        _wait(ready, 30, "floor.py answering")
    except BaseException:
        stop(proc)
        raise
    return proc, port


def nsd_binary(wanted: str) -> str | None:
    """The NSD executable: wanted as a path or a name looked up on PATH and the sbin directories."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which(wanted, path=search)


def start_nsd(binary: str, workdir: Path, servers: int) -> tuple[subprocess.Popen, int]:
    """NSD in the foreground (-d), unprivileged-style: no user switch, no chroot, no database."""
    port = procs.free_port()
    run = workdir / f"nsd{servers}"
    run.mkdir()
    conf = run / "nsd.conf"
    conf.write_text(f"""server:
    ip-address: 127.0.0.1
    port: {port}
    do-ip6: no
    server-count: {servers}
    reuseport: {"yes" if servers > 1 else "no"}
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    database: ""
    zonelistfile: "{run}/zone.list"
    xfrdfile: ""
    xfrdir: "{run}"
    pidfile: "{run}/nsd.pid"
    logfile: "{run}/nsd.log"
    zonefiles-write: 0
    minimal-responses: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: "{DOMAIN.rstrip('.')}"
    zonefile: "cluster.local.zone"
""")
    proc = _popen([binary, "-d", "-c", str(conf)])
    log = run / "nsd.log"
    _wait_answering(proc, port, "nsd", lambda: log.read_text().strip()[-500:] if log.exists() else "")
    return proc, port


def _wait_answering(proc: subprocess.Popen, port: int, what: str, log: Callable[[], str] = str) -> None:
    """Until the C server proc answers the first name NOERROR on port (stopped on failure)."""
    probe = dns.message.make_query(names(1)[0], "A")

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log()}")
        try:
            return dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.3).rcode() == dns.rcode.NOERROR
        except (OSError, dns.exception.Timeout):
            return False

    try:
        _wait(ready, 20, f"{what} answering")
    except BaseException:
        stop(proc)
        raise


def start_knot(binary: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """knotd in the foreground: one UDP and one TCP worker, the zone file NSD serves, no journal."""
    port = procs.free_port()
    run = workdir / "knot"
    run.mkdir()
    conf = run / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{run}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{run}"
log:
  - target: stderr
    any: warning
zone:
  - domain: {DOMAIN.rstrip('.')}
    file: "{workdir}/cluster.local.zone"
    journal-content: none
    zonefile-sync: -1
""")
    proc = _popen([binary, "-c", str(conf)])
    _wait_answering(proc, port, "knotd")
    return proc, port


def check_answers(label: str, port: int, count: int, samples: int = 25) -> bool:
    """Ask sample names (first, last, random) and require NOERROR, AA and exactly the expected A record."""
    all_names = names(count)
    picks = sorted({0, count - 1, *random.sample(range(count), min(samples, count))})
    first = None
    for i in picks:
        query = dns.message.make_query(all_names[i], "A", use_edns=False)
        try:
            wire = dns.query.udp(query, "127.0.0.1", port=port, timeout=2, ignore_unexpected=True)
        except dns.exception.Timeout:
            print(f"  check {label}: {all_names[i]} A timed out", flush=True)
            return False
        got = sorted(rd.address for rrset in wire.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)
        if wire.rcode() != dns.rcode.NOERROR or not wire.flags & dns.flags.AA or got != [address(i)]:
            print(f"  check {label}: {all_names[i]} A -> {dns.rcode.to_text(wire.rcode())} "
                  f"flags={dns.flags.to_text(wire.flags)} answer={got}, expected [{address(i)}]", flush=True)
            return False
        if first is None:
            first = (all_names[i], wire, len(wire.to_wire()))
    name, wire, size = first
    rrset = wire.answer[0]
    print(f"  check {label}: {len(picks)} sample names NOERROR with the expected address, e.g. {name} A -> "
          f"{dns.rcode.to_text(wire.rcode())} [{dns.flags.to_text(wire.flags)}] {rrset.ttl} {rrset[0].address}, "
          f"{size} bytes, answer/authority/additional {len(wire.answer)}/{len(wire.authority)}/"
          f"{len(wire.additional)}", flush=True)
    return True


def check_mix(label: str, port: int, count: int, samples: int = 5) -> bool:
    """--mix pod: the search-path names are NXDOMAIN (A and AAAA) and AAAA is NODATA."""
    all_names = names(count)
    for i in random.sample(range(count), min(samples, count)):
        for query in churn.mix("pod", [all_names[i]], DOMAIN):
            if query.rcode == dns.rcode.NOERROR and query.qtype == dns.rdatatype.A:
                continue  # checked by check_answers
            ask = dns.message.make_query(query.name, query.qtype, use_edns=False)
            try:
                wire = dns.query.udp(ask, "127.0.0.1", port=port, timeout=2, ignore_unexpected=True)
            except dns.exception.Timeout:
                print(f"  check {label}: {query.name} {dns.rdatatype.to_text(query.qtype)} timed out", flush=True)
                return False
            if wire.rcode() != query.rcode or wire.answer or not wire.flags & dns.flags.AA:
                print(f"  check {label}: {query.name} {dns.rdatatype.to_text(query.qtype)} -> "
                      f"{dns.rcode.to_text(wire.rcode())} [{dns.flags.to_text(wire.flags)}] with "
                      f"{len(wire.answer)} answers, expected {dns.rcode.to_text(query.rcode)} and none", flush=True)
                return False
    print(f"  check {label}: pod mix of {samples} sample names: search-path names NXDOMAIN, AAAA NODATA, "
          f"all authoritative", flush=True)
    return True


def check_write(label: str, port: int, plan: churn.Plan, number: int, timeout: float = 3.0) -> bool:
    """Write number of plan (the last one made) is what skydns serves now (soon after)."""
    key, value = churn.planned_write(plan, number)
    name, want = msg.key_to_name(key), json.loads(value)["host"]
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        try:
            wire = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
            got = sorted(rd.address for rrset in wire.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A)
            if got == [want]:
                return True
        except dns.exception.Timeout:
            pass
        time.sleep(0.05)
    print(f"  {label}: the last write ({name} -> {want}) is not served: {got}", flush=True)
    return False


def idle_cost(servers: dict[str, tuple[int, int]], labels: list[str], writer: churn.Writer,
              seconds: float) -> dict[str, float]:
    """CPU per write of each server while nothing queries it (applying watch events), us."""
    if seconds <= 0:
        return {}
    start = {label: churn.cpu_seconds(servers[label][1]) for label in labels}
    count = writer.count
    time.sleep(seconds)
    writes = writer.count - count
    if not writes:
        return {}
    return {label: (churn.cpu_seconds(servers[label][1]) - start[label]) / writes * 1e6 for label in labels}


# -- the run ---------------------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt(load: Load | None) -> str:
    if load is None:
        return "-"
    extra = f", {load.errors} errors" if load.errors else ""
    writes = f", {load.writes:.1f} writes/s" if load.writes is not None else ""
    return f"{load.qps:,.0f} qps {_us(load.cpu_us)} us/q ({load.lost} lost{extra}{writes})"


@dataclasses.dataclass(frozen=True, slots=True)
class Mean:
    """A configuration over its rounds: rates and CPU per query averaged per round (so the ratio
    of two means lies within the range of the same-round ratios), counts summed."""

    qps: float
    errors: int
    lost: int
    cpu_us: float | None
    writes: float | None


def _mean(loads: list[Load]) -> Mean | None:
    if not loads:
        return None
    cpu = [x.cpu_us for x in loads]
    writes = [x.writes for x in loads if x.writes is not None]
    return Mean(sum(x.qps for x in loads) / len(loads), sum(x.errors for x in loads), sum(x.lost for x in loads),
                None if None in cpu else sum(cpu) / len(cpu), sum(writes) / len(writes) if writes else None)


def _spread(values: list[float | None], unit: str, digits: int = 1) -> str:
    """The min-max of per-round values, e.g. "8.1-9.0"."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return ""
    return f" ({min(known):.{digits}f}-{max(known):.{digits}f}{unit})"


STATIC, UNRELATED, NAMES = "static", "unrelated", "names"
TOOLS = ("python", "dnsperf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="A records, in etcd and in the NSD zone")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="measured time per configuration and tool, seconds, split over the rounds")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds, every other one in reverse order, so load drift hits all alike")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before the first round, seconds (later rounds: 0.2), after every distinct query was asked once")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--window", type=int, default=64, help="queries in flight per client")
    parser.add_argument("--workers-run", action="store_true",
                        help="also measure skydns --workers=2 and NSD server-count 2")
    parser.add_argument("--nsd", default="nsd", help="the NSD executable (name or path)")
    parser.add_argument("--no-nsd", action="store_true", help="skip the C server (NSD)")
    parser.add_argument("--knot", default="knotd", help="the Knot DNS executable (name or path)")
    parser.add_argument("--no-knot", action="store_true", help="skip the second C server (Knot DNS)")
    parser.add_argument("--unbatched", action="store_true",
                        help="also measure skydns and the floor with one datagram per system call (--udp-batch=0)")
    parser.add_argument("--python-hits", action="store_true",
                        help="also measure skydns with the Python loop for the cached hits (--no-compiled-hits)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip bench/floor.py (uvloop answering from a dict: the floor of a Python server)")
    parser.add_argument("--mix", choices=("a", "pod"), default="a",
                        help="a: one A query per name; pod: a pod's ndots:5 search path (NXDOMAIN, A, AAAA NODATA)")
    parser.add_argument("--churn", type=float, default=0.0, metavar="R",
                        help="also measure skydns while R etcd writes per second go to an unrelated key, and "
                             "separately to the queried names in turn (0: static store only)")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="with --churn: seconds without queries at the start of each churn phase, to measure "
                             "the server CPU per write applied (0: skip)")
    parser.add_argument("--miss", action="store_true",
                        help="only the in-process cost of a cache miss (Handler.handle after a change), then exit")
    parser.add_argument("--miss-samples", type=int, default=2000, help="most samples per case for --miss")
    parser.add_argument("--miss-seconds", type=float, default=10.0,
                        help="most time per case for --miss, seconds (a 100-address miss takes ~0.1 s)")
    args = parser.parse_args()
    if args.miss:
        churn.print_miss(args.miss_samples, args.miss_seconds)
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()

    nsd = None if args.no_nsd else nsd_binary(args.nsd)
    if nsd is None and not args.no_nsd:
        print(f"{args.nsd} not found: skipping the C server configurations (install: {NSD_INSTALL})", flush=True)
    knot = None if args.no_knot else nsd_binary(args.knot)
    if knot is None and not args.no_knot:
        print(f"{args.knot} not found: skipping Knot DNS (install: {KNOT_INSTALL})", flush=True)
    if not shutil.which("dnsperf"):
        print(f"dnsperf not found: only the python load generator runs (install: {DNSPERF_INSTALL})", flush=True)

    qnames = names(args.records)
    queries = churn.mix(args.mix, qnames, DOMAIN)
    packets = [(query_packet(q.name, 0, q.qtype), q.rcode) for q in queries]
    configs: list[tuple[str, str, tuple]] = []  # (label, kind, skydns args or NSD server count)
    if nsd:
        configs.append(("nsd", "nsd", (1,)))
    if knot:
        configs.append(("knot", "knot", ()))
    if not args.no_floor:
        configs.append(("floor", "floor", ()))
        if args.unbatched:
            configs.append(("floor 1/call", "floor", ("--udp-batch", "0")))
    configs += [("cache", "skydns", ()), ("nocache", "skydns", ("--answer-cache-size=0",))]
    if args.python_hits:
        configs.append(("cache py-hits", "skydns", ("--no-compiled-hits",)))
    if args.unbatched:
        configs.append(("cache 1/call", "skydns", ("--udp-batch=0",)))
    if args.workers_run:
        if nsd:
            configs.append(("nsd x2", "nsd", (2,)))
        configs.append(("workers=2", "skydns", ("--workers=2",)))
    kinds = {label: kind for label, kind, _ in configs}
    # churn phases: every skydns with a cache (NSD serves a zone file; nocache misses anyway)
    churned = [label for label, kind, extra in configs if kind == "skydns" and "--answer-cache-size=0" not in extra]
    ctx = multiprocessing.get_context("fork")
    plans: dict[str, tuple[churn.Plan, object]] = {}  # phase -> (plan, shared count of writes made)
    if args.churn > 0:
        plans[UNRELATED] = (churn.unrelated_plan(), ctx.Value("q", 0))
        plans[NAMES] = (churn.names_plan(qnames, address, other_address), ctx.Value("q", 0))
    phases = [STATIC, *plans]
    chunk = args.seconds / args.rounds
    print(f"bench: {args.records} records, mix {args.mix} ({len(queries)} distinct queries), "
          f"{args.seconds:g}s per configuration, phase and tool in {args.rounds} rounds, "
          f"{args.clients} client processes x {args.window} in flight, dnsperf -c 4, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if plans:
        print(f"churn: {args.churn:g} etcd writes/s during the measurement of {', '.join(churned)}; "
              f"'{UNRELATED}': {churn.UNRELATED_KEY} toggled; '{NAMES}': the {args.records} queried names in turn, "
              f"each changed every {args.records / args.churn:g}s", flush=True)

    # (label, phase) -> tool ("python", "dnsperf"; "idle": CPU us per write) -> round -> Load (float)
    results: dict[tuple[str, str], dict[str, dict[int, Load]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            etcd = stack.enter_context(procs.running_etcd())
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nsd-")))
            t0 = time.monotonic()
            load_records(etcd, args.records)
            (tmp / "cluster.local.zone").write_text(zone_text(args.records))
            print(f"loaded {args.records} records into etcd and the zone file in {time.monotonic() - t0:.1f}s",
                  flush=True)
            # All servers run side by side (idle ones cost nothing); only the one measured gets load.
            servers: dict[str, tuple[int, int]] = {}  # label -> (port, pid)
            for label, kind, extra in configs:
                if kind == "nsd":
                    try:
                        proc, port = start_nsd(nsd, tmp, *extra)
                    except (RuntimeError, TimeoutError) as exc:
                        print(f"{label:10s} skipped: NSD did not start: {exc}", flush=True)
                        continue
                elif kind == "knot":
                    try:
                        proc, port = start_knot(knot, tmp)
                    except (RuntimeError, TimeoutError) as exc:
                        print(f"{label:10s} skipped: knotd did not start: {exc}", flush=True)
                        continue
                elif kind == "floor":
                    proc, port = start_floor(args.records, *extra)
                else:
                    proc, port = start_skydns(etcd, *extra)
                stack.callback(stop, proc)
                if check_answers(label, port, args.records) and (args.mix != "pod"
                                                                 or check_mix(label, port, args.records)):
                    servers[label] = (port, proc.pid)
                else:
                    print(f"{label:10s} skipped: its answers differ from the records", flush=True)
            for number in range(args.rounds):
                forward = number % 2 == 0
                for phase in phases if forward else reversed(phases):
                    labels = [label for label in servers if phase == STATIC or label in churned]
                    with contextlib.ExitStack() as churning:
                        writer = None
                        if phase != STATIC:
                            plan, done = plans[phase]
                            writer = churning.enter_context(churn.Writer(etcd.url, plan, args.churn, done))
                            time.sleep(0.5)  # the writes are flowing before anything is measured
                            for label, per_write in idle_cost(servers, labels, writer, args.idle).items():
                                results.setdefault((label, phase), {}).setdefault("idle", {})[number] = per_write
                                print(f"round {number + 1} {label:10s} {phase:9s} no queries: "
                                      f"{per_write:.0f} us of CPU per write applied", flush=True)
                        for label in labels if forward else reversed(labels):
                            target = Target(*servers[label], writer)
                            warmup = args.warmup if number == 0 else 0.2
                            row = results.setdefault((label, phase), {})
                            if missing := prime(target.port, packets):
                                print(f"  {label}: {missing} of {len(packets)} warm-up queries unanswered", flush=True)
                            load = measure(target, packets, args.clients, args.window, warmup, chunk)
                            row.setdefault("python", {})[number] = load
                            line = dnsperf(target, queries, chunk)
                            if line is not None:
                                row.setdefault("dnsperf", {})[number] = line
                            print(f"round {number + 1} {label:10s} {phase:9s} python {_fmt(load)}; "
                                  f"dnsperf {_fmt(line)}; load average {os.getloadavg()[0]:.2f}", flush=True)
                    if writer is not None:
                        plan, done = plans[phase]
                        served = [label for label in labels
                                  if check_write(label, servers[label][0], plan, done.value - 1)]
                        print(f"  churn {phase}: {done.value} writes made so far; the last one is served by "
                              f"{', '.join(served) or 'none'}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        sys.exit(130)

    print()
    report(results, kinds, args)
    print(f"total {time.monotonic() - started:.0f}s, load average {os.getloadavg()[0]:.2f}")


def report(results: dict[tuple[str, str], dict[str, dict[int, Load]]], kinds: dict[str, str],
           args: argparse.Namespace) -> None:
    """The table (means over rounds, spread of the per-round CPU per query) and the ratios."""
    means = {key: {tool: _mean(list(row[tool].values())) for tool in TOOLS if tool in row}
             for key, row in results.items()}
    print(f"mix {args.mix}, churn {args.churn:g} writes/s, {args.rounds} rounds; CPU = server CPU per answered "
          f"query, microseconds, mean over rounds (min-max of the rounds)")
    print()
    print("| server | store | python qps | python CPU/q | dnsperf qps | dnsperf CPU/q | etcd writes/s |")
    print("|---|---|---|---|---|---|---|")
    for (label, phase), row in results.items():
        cells = []
        for tool in TOOLS:
            mean = means[(label, phase)].get(tool)
            if mean is None:
                cells += ["-", "-"]
                continue
            spread = _spread([x.cpu_us for x in row[tool].values()], "")
            errors = f", {mean.errors} errors" if mean.errors else ""
            lost = f", {mean.lost} lost" if mean.lost else ""
            cells += [f"{mean.qps:,.0f}{lost}{errors}", f"{_us(mean.cpu_us)}{spread}"]
        writes = [x.writes for tool in TOOLS for x in row.get(tool, {}).values() if x.writes is not None]
        write_cell = f"{sum(writes) / len(writes):.1f}{_spread(writes, '')}" if writes else "-"
        print(f"| {label} | {phase} | {' | '.join(cells)} | {write_cell} |")

    def ratio(a: tuple[str, str], b: tuple[str, str], tool: str) -> str | None:
        """a's CPU per query over b's, both averaged over the rounds measured for both (a weighted
        mean of the same-round ratios), and the range of the same-round ratios."""
        if tool not in results.get(a, {}) or tool not in results.get(b, {}):
            return None
        x, y = results[a][tool], results[b][tool]
        common = [n for n in x if n in y and x[n].cpu_us is not None and y[n].cpu_us]
        if not common:
            return None
        mean = sum(x[n].cpu_us for n in common) / sum(y[n].cpu_us for n in common)
        return f"{mean:.2f}x{_spread([x[n].cpu_us / y[n].cpu_us for n in common], 'x', 2)}"

    for (label, phase), row in results.items():
        if row.get("idle"):
            values = list(row["idle"].values())
            print(f"{label} {phase}: {sum(values) / len(values):.0f} us{_spread(values, ' us', 0)} of server CPU "
                  f"per write applied, with no queries")
    print()
    print("| CPU per query, ratio | python | dnsperf |")
    print("|---|---|---|")
    for label, phase in results:
        if phase != STATIC:
            pair = ((label, phase), (label, STATIC))
            print(f"| {label} {phase} / {label} static | {ratio(*pair, 'python') or '-'} | "
                  f"{ratio(*pair, 'dnsperf') or '-'} |")
    for reference in ("nsd", "knot"):
        for label, phase in results:
            other = "nsd x2" if label == "workers=2" and reference == "nsd" else reference
            if kinds[label] in ("skydns", "floor") and (other, STATIC) in results:
                pair = ((label, phase), (other, STATIC))
                print(f"| {label} {phase} / {other} static | {ratio(*pair, 'python') or '-'} | "
                      f"{ratio(*pair, 'dnsperf') or '-'} |")
    if ("knot", STATIC) in results and ("nsd", STATIC) in results:
        pair = (("knot", STATIC), ("nsd", STATIC))
        print(f"| knot static / nsd static | {ratio(*pair, 'python') or '-'} | {ratio(*pair, 'dnsperf') or '-'} |")
    if ("floor", STATIC) in results:
        for label in [label for label, phase in results if phase == STATIC and kinds[label] == "skydns"]:
            pair = ((label, STATIC), ("floor", STATIC))
            print(f"| {label} static / floor static | {ratio(*pair, 'python') or '-'} | "
                  f"{ratio(*pair, 'dnsperf') or '-'} |")
    print()
    for a, b in [("cache", "nocache"), ("workers=2", "nocache"), ("cache", "nsd"), ("cache", "knot"),
                 ("nocache", "nsd"),
                 ("workers=2", "nsd x2"), ("nsd x2", "nsd"), ("workers=2", "cache")]:
        x, y = means.get((a, STATIC)), means.get((b, STATIC))
        if x and y:
            qps = [f"{x[t].qps / y[t].qps:.2f}x" if x.get(t) and y.get(t) and y[t].qps else "-" for t in TOOLS]
            print(f"qps ratio {a}/{b} (static): python {qps[0]}, dnsperf {qps[1]}")


if __name__ == "__main__":
    main()
