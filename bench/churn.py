"""Churn for bench/run.py: etcd writes during the measurement, server CPU, the pod query mix,
and the in-process cost of a cache miss.

Rules of this module:

1. The writer is one process with one long-lived HTTP/1.1 keep-alive connection to etcd's v3
   JSON gateway (``POST /v3/kv/put``), paced by the clock: write number k is due at
   ``start + k / rate``; a writer that falls behind writes at once, and one more than a second
   behind starts its schedule again (no burst). It counts the puts etcd acknowledged in a
   shared counter, so the benchmark reports the writes actually made per second.
2. Every write changes the value of its key: write number k (counted over the whole run, not
   per writer process) goes to ``plan[k % len(plan)]`` with the first of the key's two values
   when ``k // len(plan)`` is even, else the second. A server that skipped a put of an equal
   value would otherwise get away with no work.
3. Two plans: ``unrelated`` is one key no query reads
   (``/skydns/local/cluster/svc/churn/flap/x1``, toggling between two addresses); ``names`` is
   the key of every queried service name in turn, so at R writes/s each of N names changes
   once every N/R seconds (1,000 names at 100/s: every 10 s).
4. Server CPU is utime+stime from ``/proc/<pid>/stat`` of the server process and all its
   descendants (NSD serves from a child, skydns ``--workers`` from spawned workers).
5. The pod mix (``mix("pod", ...)``) is what glibc's ``getaddrinfo`` (AF_UNSPEC, the usual
   application call) sends from a pod whose resolv.conf is ``search <ns>.svc.<zone>
   svc.<zone> <zone>`` / ``options ndots:5`` (REFERENCE section 7) when it looks up the short
   name ``svcN.nsM`` of a service in another namespace: the name has 1 dot < 5, so the search
   list is tried first, in order, and A and AAAA are sent together for each candidate; a
   candidate where both come back NXDOMAIN moves on to the next one, and the first candidate
   with an answer ends the lookup. Per lookup that is four queries:
   ``svcN.nsM.<ns>.svc.<zone>`` A and AAAA (NXDOMAIN, NXDOMAIN), then
   ``svcN.nsM.svc.<zone>`` A (the address) and AAAA (NOERROR, no records: NODATA). The
   remaining candidates (``svcN.nsM.<zone>``, then ``svcN.nsM.`` as written) are never sent.
   No EDNS (glibc sends none unless ``options edns0``), RD set.
6. The miss benchmark uses only public interfaces: ``store.Store.from_records``, ``put``,
   ``delete`` and ``transport.Handler(settings, view).handle(bytes, proto)``. A sample is the
   first query of a name after a change that alters its answer (the query was answered, and
   so cached, just before the change); every timed answer is checked to carry the new data.
   Times are the thread's CPU time (``time.thread_time_ns``), so a busy machine that
   preempts the benchmark does not add its waits to the figures.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from skydns import msg

A, AAAA, SRV = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV
NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN
POD_NAMESPACE = "default"  # the namespace of the pod sending the pod mix
UNRELATED_KEY = "/skydns/local/cluster/svc/churn/flap/x1"


# -- query mixes -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    name: str  # fully qualified
    qtype: int
    rcode: int  # the expected answer code


def mix(kind: str, service_names: list[str], domain: str) -> list[Query]:
    """The queries one round of lookups of every service name sends (rule 5 for "pod")."""
    if kind == "a":
        return [Query(n, A, NOERROR) for n in service_names]
    if kind != "pod":
        raise ValueError(f"unknown mix {kind!r}")
    suffix = f".svc.{domain}"
    out = []
    for name in service_names:
        short = name[:-len(suffix)]  # svcN.nsM
        first = f"{short}.{POD_NAMESPACE}{suffix}"
        out += [Query(first, A, NXDOMAIN), Query(first, AAAA, NXDOMAIN),
                Query(name, A, NOERROR), Query(name, AAAA, NOERROR)]
    return out


# -- server CPU ------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its descendants, seconds (rule 4)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = _stat(current)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        todo += parents.get(current, [])
    return total / _TICKS


# -- the etcd writer ---------------------------------------------------------------------------


Plan = list[tuple[str, str, str]]  # (key, first value, second value)


def unrelated_plan() -> Plan:
    return [(UNRELATED_KEY, '{"host":"10.255.0.1"}', '{"host":"10.255.0.2"}')]


def names_plan(service_names: list[str], address: Callable[[int], str],
               other: Callable[[int], str]) -> Plan:
    return [(msg.name_to_key(n), json.dumps({"host": address(i)}), json.dumps({"host": other(i)}))
            for i, n in enumerate(service_names)]


def planned_write(plan: Plan, number: int) -> tuple[str, str]:
    """Key and value of write number (rule 2)."""
    key, first, second = plan[number % len(plan)]
    return key, first if (number // len(plan)) % 2 == 0 else second


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write_loop(host: str, port: int, plan: Plan, rate: float, done, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = start + sent / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0:
            start, sent = now, 0  # rule 1: far behind, start again instead of bursting
        key, value = planned_write(plan, done.value)
        body = json.dumps({"key": _b64(key), "value": _b64(value)})
        try:
            conn.request("POST", "/v3/kv/put", body, headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=5)
            ok = False
        if ok:
            with done.get_lock():
                done.value += 1
        sent += 1
    conn.close()


class Writer:
    """A writer process putting plan's values at rate per second until stopped (rule 1).

    ``done`` is a shared counter of acknowledged writes; pass the same one to every Writer of
    one plan so that rule 2 holds across them.
    """

    def __init__(self, etcd_url: str, plan: Plan, rate: float, done) -> None:
        host, _, port = etcd_url.removeprefix("http://").rpartition(":")
        ctx = multiprocessing.get_context("fork")
        self.done = done
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=_write_loop, args=(host, int(port), plan, rate, done, self.stop),
                                name="bench-etcd-writer", daemon=True)

    def __enter__(self) -> Writer:
        self.proc.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)

    @property
    def count(self) -> int:
        return self.done.value


# -- the in-process miss benchmark -------------------------------------------------------------


def _records(domain: str) -> dict[str, str]:
    """The store of the miss benchmark: kube2sky's layout (REFERENCE 3.2) for a ClusterIP
    service with a named port, a headless service with 3 endpoints and named ports, one with
    100 endpoints and a named port, and 1,000 plain services around them."""
    svc = f"svc.{domain}"
    records = {msg.name_to_key(f"svc{i}.ns{i % 10}.{svc}"): json.dumps({"host": f"10.0.{i // 256}.{i % 256}"})
               for i in range(1000)}
    base = msg.name_to_key(f"web.bench.{svc}")
    records[f"{base}/h1"] = '{"host":"10.96.0.20","priority":10,"weight":10,"ttl":30}'
    records[f"{base}/_tcp/_http/h1"] = json.dumps({"host": f"web.bench.{svc}", "port": 80, "priority": 10,
                                                    "weight": 10, "ttl": 30})
    base = msg.name_to_key(f"db.bench.{svc}")
    for n in range(3):
        records[f"{base}/e{n}"] = json.dumps({"host": f"10.1.0.{n + 1}", "priority": 10, "weight": 10, "ttl": 30})
        records[f"{base}/_tcp/_pg/e{n}"] = json.dumps({"host": f"e{n}.db.bench.{svc}", "port": 5432,
                                                        "priority": 10, "weight": 10, "ttl": 30})
    base = msg.name_to_key(f"big.bench.{svc}")
    for n in range(100):
        records[f"{base}/e{n}"] = json.dumps({"host": f"10.2.0.{n + 1}", "ttl": 30})
        records[f"{base}/_tcp/_pg/e{n}"] = json.dumps({"host": f"e{n}.big.bench.{svc}", "port": 5432, "ttl": 30})
    return records


@dataclasses.dataclass(slots=True)
class _Case:
    label: str
    name: str
    qtype: int
    edns: bool
    proto: str
    # the change before sample k: [(key, value or None for delete)]; the check of the answer
    change: Callable[[int], list[tuple[str, str | None]]]
    check: Callable[[int, dns.message.Message], bool]
    # applied (untimed) before the query that fills the cache ahead of the change
    restore: Callable[[int], list[tuple[str, str | None]]] = lambda k: []


def _addresses(section: list) -> set[str]:
    return {rd.address for rrset in section if rrset.rdtype in (A, AAAA) for rd in rrset}


def _cases(domain: str) -> list[_Case]:
    svc = f"svc.{domain}"
    web = msg.name_to_key(f"web.bench.{svc}") + "/h1"
    gone = msg.name_to_key(f"gone.bench.{svc}")
    db = msg.name_to_key(f"db.bench.{svc}")
    big = msg.name_to_key(f"big.bench.{svc}")

    def web_ip(k: int) -> str:
        return f"10.96.{k % 2}.{20 + k // 2 % 200}"

    def db_ip(k: int) -> str:
        return f"10.1.{1 + k // 3 % 200}.{k % 3 + 1}"

    def big_ip(k: int) -> str:
        return f"10.3.{k // 100 % 250}.{k % 100 + 1}"

    def put(key: str, ip: str) -> list[tuple[str, str | None]]:
        return [(key, json.dumps({"host": ip, "priority": 10, "weight": 10, "ttl": 30}))]

    return [
        _Case("A (ClusterIP)", f"web.bench.{svc}", A, False, "udp",
              lambda k: put(web, web_ip(k)),
              lambda k, r: r.rcode() == NOERROR and _addresses(r.answer) == {web_ip(k)}),
        _Case("AAAA NODATA", f"web.bench.{svc}", AAAA, False, "udp",
              lambda k: put(web, web_ip(k)),
              lambda k, r: r.rcode() == NOERROR and not r.answer and len(r.authority) == 1),
        _Case("NXDOMAIN (name deleted)", f"gone.bench.{svc}", A, False, "udp",
              lambda k: [(gone, None)],
              lambda k, r: r.rcode() == NXDOMAIN and not r.answer and len(r.authority) == 1,
              restore=lambda k: put(gone, "10.4.0.1")),
        _Case("SRV + glue (3 endpoints)", f"_pg._tcp.db.bench.{svc}", SRV, True, "udp",
              lambda k: put(f"{db}/e{k % 3}", db_ip(k)),
              lambda k, r: len(r.answer) == 1 and len(r.answer[0]) == 3 and db_ip(k) in _addresses(r.additional)),
        _Case("A headless, 100 addresses, UDP EDNS 1232 (TC)", f"big.bench.{svc}", A, True, "udp",
              lambda k: put(f"{big}/e{k % 100}", big_ip(k)),
              lambda k, r: bool(r.flags & dns.flags.TC) and r.rcode() == NOERROR),
        _Case("A headless, 100 addresses, TCP", f"big.bench.{svc}", A, True, "tcp",
              lambda k: put(f"{big}/e{k % 100}", big_ip(k)),
              lambda k, r: r.rcode() == NOERROR and big_ip(k) in _addresses(r.answer)
              and sum(len(x) for x in r.answer) == 100),
        _Case("SRV headless, 100 targets + glue, TCP", f"_pg._tcp.big.bench.{svc}", SRV, True, "tcp",
              lambda k: put(f"{big}/e{k % 100}", big_ip(k)),
              lambda k, r: r.rcode() == NOERROR and sum(len(x) for x in r.answer) == 100
              and big_ip(k) in _addresses(r.additional)),
    ]


# The thread's own CPU time: on a shared machine, time spent descheduled is not the miss's cost.
_clock = time.thread_time_ns


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def miss_benchmark(samples: int = 2000, budget: float = 10.0,
                   domain: str = "cluster.local.") -> list[tuple[str, dict[str, float]]]:
    """Time ``Handler.handle`` on the first query of a name after its change (rule 6), per case
    (at most samples, and no more than budget seconds of them): median, p90 and mean of the
    miss, the median of the hit that follows it, and the median of ``Store.put``/``delete``
    applying the change; microseconds. Raises AssertionError when an answer does not carry the
    change."""
    from skydns import settings as settings_mod, store, transport  # only here: run.py needs no skydns

    view = store.Store.from_records(_records(domain))
    handler = transport.Handler(settings_mod.Settings(domains=(domain,), no_rec=True), view)
    revision = 10
    results = []
    for case in _cases(domain):
        query = dns.message.make_query(case.name, case.qtype, use_edns=0 if case.edns else False,
                                       payload=1232)

        def ask(qid: int) -> bytes:
            query.id = qid
            return handler.handle(query.to_wire(), case.proto)

        def apply(changes: list[tuple[str, str | None]]) -> float:
            nonlocal revision
            t0 = _clock()
            for key, value in changes:
                revision += 1
                if value is None:
                    view.delete(key, revision)
                else:
                    view.put(key, value.encode(), revision)
            return (_clock() - t0) / 1000

        misses, hits, applies = [], [], []
        gc.collect()
        deadline = time.monotonic() + budget
        for k in range(samples + 20):  # the first 20 warm up
            if k > 40 and time.monotonic() > deadline:
                break
            apply(case.restore(k))
            ask(1)  # answered, so cached, before the change
            applied = apply(case.change(k))
            query.id = 2
            wire = query.to_wire()
            t0 = _clock()
            out = handler.handle(wire, case.proto)
            miss = (_clock() - t0) / 1000
            t0 = _clock()
            handler.handle(wire, case.proto)
            hit = (_clock() - t0) / 1000
            reply = dns.message.from_wire(out)
            if not case.check(k, reply):
                raise AssertionError(f"{case.label}: sample {k} answer does not carry the change:\n{reply}")
            if k >= 20:
                misses.append(miss)
                hits.append(hit)
                applies.append(applied)
        results.append((case.label, {"miss median": statistics.median(misses), "miss p90": _pct(misses, 0.9),
                                     "miss mean": statistics.fmean(misses), "hit median": statistics.median(hits),
                                     "put median": statistics.median(applies),
                                     "bytes": len(out), "samples": len(misses)}))
    return results


def print_miss(samples: int, budget: float) -> None:
    print(f"miss benchmark: transport.Handler.handle in process, thread CPU time, up to {samples} samples or {budget:g}s per "
          f"case, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = miss_benchmark(samples, budget)
    print()
    print("| first query after a change | miss median | miss p90 | miss mean | hit median "
          "| store put/delete | answer bytes | samples |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['miss median']:.1f} us | {r['miss p90']:.1f} us | {r['miss mean']:.1f} us "
              f"| {r['hit median']:.1f} us | {r['put median']:.1f} us | {r['bytes']} | {r['samples']} |")
    print(f"load average {os.getloadavg()[0]:.2f}")
