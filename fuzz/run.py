"""`make fuzz`: long fuzzing runs of the targets in tests/fuzz/targets.py.

With atheris installed (the test extras install it where a wheel exists: Linux x86-64), each
atheris target (packet, record, store) runs FUZZ_SECONDS seconds (default 300) with its corpus
in .fuzz-corpus/<target>; then, and always without atheris, the hypothesis properties of
tests/fuzz run with the "fuzz" profile: random search, FUZZ_EXAMPLES examples each (default
20000). Exit code non-zero on any finding (atheris writes the crashing input to crash-*).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def seeds(target: str) -> list[bytes]:
    """A few inputs to start an empty corpus from (libFuzzer mutates them)."""
    sys.path.insert(0, str(ROOT))
    import dns.message

    from tests.fuzz import strategies

    good = [b'{"host":"10.0.0.1","ttl":30}', b'{"host":"fd00::1"}', b'{"host":"web.default.svc.cluster.local.",'
            b'"port":80,"priority":10,"weight":10}', b'{"text":"1.1.0"}', b'{"host":"mx.example.","mail":true}']
    if target == "packet":
        return [b"\x00" + dns.message.make_query(name, rdtype, use_edns=0).to_wire()
                for name in ("web.default.svc.cluster.local.", "db.default.svc.cluster.local.", "www.example.org.")
                for rdtype in ("A", "SRV", "TXT")]
    if target == "record":
        return [*good, *strategies.KNOWN_BAD]
    return [b"\x00\xff".join(good[i:i + 3]) for i in range(len(good))]


def main() -> int:
    seconds = os.environ.get("FUZZ_SECONDS", "300")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    failed = 0
    if importlib.util.find_spec("atheris") is not None:
        for target in ("packet", "record", "store"):
            corpus = ROOT / ".fuzz-corpus" / target
            corpus.mkdir(parents=True, exist_ok=True)
            if not any(corpus.iterdir()):
                for number, seed in enumerate(seeds(target)):
                    (corpus / f"seed-{number}").write_bytes(seed)
            print(f"fuzz: atheris {target} for {seconds}s (corpus {corpus})", flush=True)
            code = subprocess.call([sys.executable, str(ROOT / "fuzz" / "atheris_target.py"), target,
                                    f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=4096",
                                    str(corpus)], cwd=ROOT, env=env)
            failed |= code != 0
    else:
        print("fuzz: atheris is not installed; hypothesis only", flush=True)
    env.update(FUZZ_PROFILE="fuzz", FUZZ_EXAMPLES=os.environ.get("FUZZ_EXAMPLES", "20000"))
    print(f"fuzz: hypothesis, {env['FUZZ_EXAMPLES']} examples per property", flush=True)
    # --timeout=0: long properties may outlast the suite's per-test timeout (setup.cfg)
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0",
                            "tests/fuzz"],
                           cwd=ROOT, env=env)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
