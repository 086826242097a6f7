#!/usr/bin/env python3
"""skydns hot-path benchmark: skydns (cache, nocache) against a C authoritative server, NSD.

Starts a private etcd, skydns and NSD on 127.0.0.1 (free ports, temporary directories), all
serving the same N A records (svcN.nsM.svc.cluster.local., TTL 300), one server process per
configuration, checks a sample of the answers, warms them up and measures each for a fixed time:

  nsd        NSD, server-count 1 (one process answering, like skydns by default): the C baseline
  cache      skydns default: cached encoded answers, ID and qname case patched (DESIGN section 5)
  nocache    skydns --answer-cache-size=0: dnspython parses and renders every packet
  nsd x2     NSD, server-count 2, reuseport               (only with --workers-run)
  workers=2  skydns --workers=2 with the cache, SO_REUSEPORT (only with --workers-run)

Honesty rules: before a configuration is measured, sample names are asked with dnspython and
must come back NOERROR, authoritative, with exactly the expected address (one answer is printed
per server, with its size and section counts); a configuration that fails the check is skipped,
not measured. All servers run side by side and are measured in --rounds interleaved rounds
(every other round in reverse order) so a change of background load hits all configurations
alike. NSD runs with minimal-responses (answer section only, like skydns) and with response
rate limiting off. Answered queries per second, error answers and lost queries are
reported for both load generators.

Load generators: the built-in one is plain asyncio on raw sockets (no dnspython per packet):
pre-built queries, a fixed window of queries in flight per client process, a query with no
answer after 1 s counted as lost and replaced; it runs in --clients processes. dnsperf is run
too when it is installed. On a small machine the load generator competes with the server for
CPU, so compare the ratios within one run, not absolute numbers across runs.

Missing tools are skipped with a message: NSD (`apt-get install -y nsd`), dnsperf
(`apt-get install -y dnsperf`). Bounded in time (about 30 s with the defaults, 55 s with
--workers-run, on 2 CPUs), loopback only; every process started is stopped at the end, also on
errors, Ctrl-C and SIGTERM. Not run by the tests. Usage:

    .venv/bin/python bench/run.py [--workers-run] [--records 1000] [--seconds 4] [--no-nsd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
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

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402 - the repo's etcd runner

DOMAIN = "cluster.local."
TTL = 300  # skydns Settings.ttl default; the NSD zone uses the same
NSD_INSTALL = "apt-get install -y nsd"
DNSPERF_INSTALL = "apt-get install -y dnsperf"


# -- the records, one list for etcd and for the zone file --------------------------------------


def names(count: int) -> list[str]:
    return [f"svc{i}.ns{i % 10}.svc.{DOMAIN}" for i in range(count)]


def address(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def key(name: str, prefix: str = "skydns") -> str:
    return "/" + prefix + "/" + "/".join(reversed(name.rstrip(".").split(".")))


def load_records(etcd: procs.Etcd, count: int) -> None:
    """Write count A records with etcdctl txn batches (fast: one process per 500 keys)."""
    all_names = names(count)
    for start in range(0, count, 500):
        ops = [f"put {key(n)} {{\"host\":\"{address(i)}\"}}"
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

    def error_received(self, exc):
        pass  # ICMP port unreachable while a server starts or stops: the query is counted lost

    def expire(self) -> None:
        now = time.monotonic()
        for qid, sent in list(self.inflight.items()):
            if now - sent > 1.0:
                del self.inflight[qid]
                if self.counting:
                    self.lost += 1
        while len(self.inflight) < self.window:
            self.send_one()


async def _generate(host: str, port: int, qnames: list[str], window: int, warmup: float,
                    seconds: float) -> tuple[int, int, int]:
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
    errors: int  # answers with an rcode other than NOERROR
    lost: int  # queries without an answer


def measure(port: int, qnames: list[str], clients: int, window: int, warmup: float, seconds: float) -> Load:
    """The built-in load generator: answered queries per second summed over client processes."""
    ctx = multiprocessing.get_context("fork")  # no threads here yet; much faster than spawn
    out = ctx.Queue()
    workers = [ctx.Process(target=_client_process, args=(("127.0.0.1", port, qnames, window, warmup, seconds), out))
               for _ in range(clients)]
    try:
        for w in workers:
            w.start()
        results = [out.get(timeout=warmup + seconds + 30) for _ in workers]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.terminate()
                w.join(5)
    return Load(sum(r[0] for r in results) / seconds, sum(r[1] for r in results), sum(r[2] for r in results))


def dnsperf(port: int, qnames: list[str], seconds: float) -> Load | None:
    """dnsperf over the same names, 4 sockets, no rate limit; None when it is not installed."""
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
    fields: dict[str, str] = {}
    for line in out.stdout.splitlines():
        head, sep, tail = line.strip().partition(":")
        if sep:
            fields[head] = tail.strip()
    if "Queries per second" not in fields:
        print(f"  dnsperf gave no result (exit {out.returncode}): {out.stderr.strip()[-300:]}", flush=True)
        return None
    codes = fields.get("Response codes", "").replace(",", "").split()
    noerror = int(codes[codes.index("NOERROR") + 1]) if "NOERROR" in codes else 0
    completed = int(fields.get("Queries completed", "0").split()[0])
    lost = int(fields.get("Queries lost", "0").split()[0])
    return Load(float(fields["Queries per second"]), completed - noerror, lost)


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
    probe = dns.message.make_query(names(1)[0], "A")

    def ready() -> bool:
        if proc.poll() is not None:
            log = (run / "nsd.log").read_text() if (run / "nsd.log").exists() else ""
            raise RuntimeError(f"nsd exited with {proc.returncode}: {log.strip()[-500:]}")
        try:
            return dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.3).rcode() == dns.rcode.NOERROR
        except (OSError, dns.exception.Timeout):
            return False

    try:
        _wait(ready, 20, "nsd answering")
    except BaseException:
        stop(proc)
        raise
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


# -- the run ---------------------------------------------------------------------------------


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _fmt(load: Load | None) -> str:
    if load is None:
        return "-"
    extra = f", {load.errors} errors" if load.errors else ""
    return f"{load.qps:,.0f} qps ({load.lost} lost{extra})"


def _mean(loads: list[Load]) -> Load | None:
    """Rounds have the same length: mean of the rates, sums of the counts."""
    if not loads:
        return None
    return Load(sum(x.qps for x in loads) / len(loads), sum(x.errors for x in loads), sum(x.lost for x in loads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000, help="A records, in etcd and in the NSD zone")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="measured time per configuration and tool, seconds, split over the rounds")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds, every other one in reverse order, so load drift hits all alike")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time before the first round, seconds")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--window", type=int, default=64, help="queries in flight per client")
    parser.add_argument("--workers-run", action="store_true",
                        help="also measure skydns --workers=2 and NSD server-count 2")
    parser.add_argument("--nsd", default="nsd", help="the NSD executable (name or path)")
    parser.add_argument("--no-nsd", action="store_true", help="skip the C server (NSD)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()

    nsd = None if args.no_nsd else nsd_binary(args.nsd)
    if nsd is None and not args.no_nsd:
        print(f"{args.nsd} not found: skipping the C server configurations (install: {NSD_INSTALL})", flush=True)
    if not shutil.which("dnsperf"):
        print(f"dnsperf not found: only the python load generator runs (install: {DNSPERF_INSTALL})", flush=True)

    qnames = names(args.records)
    configs: list[tuple[str, str, tuple]] = []  # (label, kind, skydns args or NSD server count)
    if nsd:
        configs.append(("nsd", "nsd", (1,)))
    configs += [("cache", "skydns", ()), ("nocache", "skydns", ("--answer-cache-size=0",))]
    if args.workers_run:
        if nsd:
            configs.append(("nsd x2", "nsd", (2,)))
        configs.append(("workers=2", "skydns", ("--workers=2",)))
    chunk = args.seconds / args.rounds
    print(f"bench: {args.records} records, {args.seconds:g}s per configuration and tool in {args.rounds} rounds, "
          f"{args.clients} client processes x {args.window} in flight, dnsperf -c 4, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    python: dict[str, list[Load]] = {}
    perf: dict[str, list[Load]] = {}
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
            ports: dict[str, int] = {}
            for label, kind, extra in configs:
                if kind == "nsd":
                    try:
                        proc, port = start_nsd(nsd, tmp, *extra)
                    except (RuntimeError, TimeoutError) as exc:
                        print(f"{label:10s} skipped: NSD did not start: {exc}", flush=True)
                        continue
                else:
                    proc, port = start_skydns(etcd, *extra)
                stack.callback(stop, proc)
                if check_answers(label, port, args.records):
                    ports[label] = port
                else:
                    print(f"{label:10s} skipped: its answers differ from the records", flush=True)
            for number in range(args.rounds):
                order = list(ports) if number % 2 == 0 else list(reversed(ports))
                for label in order:
                    warmup = args.warmup if number == 0 else 0.2
                    load = measure(ports[label], qnames, args.clients, args.window, warmup, chunk)
                    python.setdefault(label, []).append(load)
                    line = dnsperf(ports[label], qnames, chunk)
                    if line is not None:
                        perf.setdefault(label, []).append(line)
                    print(f"round {number + 1} {label:10s} python {_fmt(load)}; dnsperf {_fmt(line)}; "
                          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        sys.exit(130)

    results = {label: (_mean(loads), _mean(perf.get(label, []))) for label, loads in python.items()}
    print()
    print("| configuration | python load generator | dnsperf |")
    print("|---|---|---|")
    for label, (load, line) in results.items():
        print(f"| {label} | {_fmt(load)} | {_fmt(line)} |")
    report(results)
    print(f"total {time.monotonic() - started:.0f}s, load average {os.getloadavg()[0]:.2f}")


def report(results: dict[str, tuple[Load, Load | None]]) -> None:
    def ratio(a: str, b: str, tool: int) -> str | None:
        if a not in results or b not in results:
            return None
        x, y = results[a][tool], results[b][tool]
        return f"{x.qps / y.qps:.2f}x" if x and y and y.qps else None

    pairs = [("cache", "nocache"), ("workers=2", "nocache"), ("cache", "nsd"), ("nocache", "nsd"),
             ("workers=2", "nsd x2"), ("nsd x2", "nsd"), ("workers=2", "cache")]
    for a, b in pairs:
        python, perf = ratio(a, b, 0), ratio(a, b, 1)
        if python or perf:
            print(f"ratio {a}/{b}: python {python or '-'}, dnsperf {perf or '-'}")


if __name__ == "__main__":
    main()
