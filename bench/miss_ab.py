"""The --miss benchmark of two skydns trees in one process, sample by sample (issues 9 and 12).

On a shared machine the cost of a miss drifts from minute to minute (another process, the
CPU's caches), so two runs of ``bench/run.py --miss`` one after the other compare badly. This
loads the skydns package of an older tree next to this tree's one (copied to a temporary
directory under other package names), builds one store and handler per side from the same
records (bench/churn.py: ``_records``, ``_cases``), and alternates the sides for every sample:
restore, ask (the answer is cached), change, then the timed miss (thread CPU time), with the
change's ``Store.put``/``delete`` timed too. Every answer is checked to carry the change.

``--bytecodes`` also counts the bytecodes one miss of each case executes (``sys.settrace``
opcode events): unlike time it does not depend on the machine's load.

    git worktree add /tmp/before <commit>     # or: git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python bench/miss_ab.py --before /tmp/before [--samples 300] [--bytecodes]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402

import churn  # noqa: E402

_IMPORTS = re.compile(r"\b(from|import) skydns\b")


def _copy(tree: pathlib.Path, name: str, into: pathlib.Path) -> None:
    """tree's skydns package as package ``name`` under into (its own imports renamed)."""
    target = into / name
    shutil.copytree(tree / "skydns", target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.glob("*.py"):
        path.write_text(_IMPORTS.sub(lambda m: f"{m.group(1)} {name}", path.read_text()))


def _tolerate_duplicate_metrics() -> None:
    """Both packages register the same prometheus metrics with the default registry."""
    from prometheus_client import registry

    real = registry.CollectorRegistry.register

    def register(self, collector):
        try:
            real(self, collector)
        except ValueError:
            pass

    registry.CollectorRegistry.register = register


def _bytecodes(handler, wire: bytes, proto: str) -> tuple[int, bytes]:
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        out = handler.handle(wire, proto)
    finally:
        sys.settrace(None)
    return count, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, type=pathlib.Path, help="a checkout of the older tree")
    parser.add_argument("--samples", type=int, default=300, help="timed samples per case and side")
    parser.add_argument("--bytecodes", action="store_true", help="also count the bytecodes of one miss")
    args = parser.parse_args()
    domain = "cluster.local."
    _tolerate_duplicate_metrics()
    with tempfile.TemporaryDirectory(prefix="miss-ab-") as tmp:
        _copy(args.before, "skydns_before", pathlib.Path(tmp))
        _copy(ROOT, "skydns_after", pathlib.Path(tmp))
        sys.path.insert(0, tmp)
        sides = {}
        for name in ("skydns_before", "skydns_after"):
            settings_mod = importlib.import_module(name + ".settings")
            store = importlib.import_module(name + ".store")
            transport = importlib.import_module(name + ".transport")
            view = store.Store.from_records(churn._records(domain))
            sides[name] = [view, transport.Handler(settings_mod.Settings(domains=(domain,), no_rec=True), view), 10]
        clock = time.thread_time_ns
        print(f"bench/miss_ab.py: {args.before} (before) against {ROOT} (after), {args.samples} samples per case "
              f"and side, alternating; load average {os.getloadavg()[0]:.2f}", flush=True)
        print()
        print("| first query after a change | miss before | miss after | before / after "
              "| put/delete before / after |" + (" bytecodes before / after |" if args.bytecodes else ""))
        print("|---|---|---|---|---|" + ("---|" if args.bytecodes else ""))
        for case in churn._cases(domain):
            query = dns.message.make_query(case.name, case.qtype, use_edns=0 if case.edns else False, payload=1232)
            misses = {name: [] for name in sides}
            puts = {name: [] for name in sides}
            codes = {}
            gc.collect()
            for k in range(args.samples + 20):  # the first 20 warm up
                for name in (sides if k % 2 else reversed(list(sides))):
                    view, handler, revision = sides[name]
                    for key, value in case.restore(k):
                        revision += 1
                        view.put(key, value.encode(), revision)
                    query.id = 1
                    handler.handle(query.to_wire(), case.proto)
                    t0 = clock()
                    for key, value in case.change(k):
                        revision += 1
                        if value is None:
                            view.delete(key, revision)
                        else:
                            view.put(key, value.encode(), revision)
                    put = (clock() - t0) / 1000
                    sides[name][2] = revision
                    query.id = 2
                    wire = query.to_wire()
                    if args.bytecodes and k == 10:
                        codes[name], out = _bytecodes(handler, wire, case.proto)
                    else:
                        t0 = clock()
                        out = handler.handle(wire, case.proto)
                        miss = (clock() - t0) / 1000
                        if k >= 20:
                            misses[name].append(miss)
                            puts[name].append(put)
                    if not case.check(k, dns.message.from_wire(out)):
                        raise AssertionError(f"{name} {case.label}: sample {k} answer does not carry the change")
            before, after = (statistics.median(misses[name]) for name in ("skydns_before", "skydns_after"))
            put_before, put_after = (statistics.median(puts[name]) for name in ("skydns_before", "skydns_after"))
            row = (f"| {case.label} | {before:.0f} us | {after:.0f} us | {before / after:.1f}x "
                   f"| {put_before:.0f} / {put_after:.0f} us |")
            if args.bytecodes:
                row += f" {codes['skydns_before']:,} / {codes['skydns_after']:,} |"
            print(row, flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
