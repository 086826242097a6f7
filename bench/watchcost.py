#!/usr/bin/env python3
"""CPU per etcd watch event of a skydns process that gets no queries, per thread.

Starts a private etcd on 127.0.0.1 with --records A records (bench/run.py's), one skydns
process (bench/run.py's flags), and bench/churn.py's writer putting --rate values per second to
one key no query reads (the "unrelated" plan). After one second of warm-up it measures
--rounds intervals of --seconds each: the writes etcd acknowledged, the utime+stime of the
skydns process (/proc/<pid>/stat) and of each of its threads (/proc/<pid>/task/*/stat: grpcio
has threads of its own), and prints microseconds of CPU per write; every write reaches skydns
as one watch event. The same figure as bench/run.py's "CPU per write applied with no queries",
without the rest of that benchmark. Clock ticks are 10 ms: measure long enough (1,000 writes
in 10 s give 10 us of resolution). Loopback only; every process is stopped at the end.

    .venv/bin/python bench/watchcost.py [--rate 100] [--seconds 10] [--rounds 3] [--records 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import churn  # noqa: E402
from bench import run as bench_run  # noqa: E402
from tests import procs  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, utime+stime seconds) of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[int(tid)] = (text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / _TICKS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="etcd writes per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    with procs.running_etcd() as etcd:
        bench_run.load_records(etcd, args.records)
        proc, _ = bench_run.start_skydns(etcd)
        try:
            done = multiprocessing.get_context("fork").Value("q", 0)
            with churn.Writer(etcd.url, churn.unrelated_plan(), args.rate, done) as writer:
                time.sleep(1.0)
                for number in range(args.rounds):
                    threads0, cpu0, writes0 = thread_cpu(proc.pid), churn.cpu_seconds(proc.pid), writer.count
                    time.sleep(args.seconds)
                    threads1, cpu1, writes = thread_cpu(proc.pid), churn.cpu_seconds(proc.pid), writer.count - writes0
                    if not writes:
                        print(f"round {number + 1}: no write was acknowledged", flush=True)
                        continue
                    per_thread = ", ".join(
                        f"{name} {(cpu - threads0.get(tid, (name, 0.0))[1]) / writes * 1e6:.0f}"
                        for tid, (name, cpu) in sorted(threads1.items()) if cpu > threads0.get(tid, (name, 0.0))[1])
                    print(f"round {number + 1}: {writes} writes ({writes / args.seconds:.1f}/s), "
                          f"{(cpu1 - cpu0) / writes * 1e6:.0f} us of skydns CPU per write "
                          f"(threads: {per_thread or 'none'}); load average {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            bench_run.stop(proc)


if __name__ == "__main__":
    main()
