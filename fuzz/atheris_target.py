"""atheris (libFuzzer) harness for long fuzzing runs: `make fuzz` starts it per target.

    python fuzz/atheris_target.py packet|record|store [libFuzzer flags, e.g. -max_total_time=300]

- packet: bytes -> transport.Handler.handle over UDP and TCP (never panics, drops or answers
  with the query's ID, readable by dnspython);
- record: bytes -> msg.decode (total; what it accepts is answerable data);
- store: bytes split into up to 4 values at fixed keys of one subtree -> store -> every name
  and type answered without SERVFAIL.
The checks are tests/fuzz/targets.py, shared with the hypothesis tests of `make test`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

with atheris.instrument_imports(include=["skydns"]):
    from skydns import msg  # noqa: F401 - instrumented for coverage
    from tests.fuzz import targets

KEYS = ("/skydns/local/cluster/svc/default/web/a", "/skydns/local/cluster/svc/default/web/_tcp/_http/b",
        "/skydns/local/cluster/svc/default/web/c/d", "/skydns/arpa/in-addr/10/0/0/1/e")


def main() -> None:
    which = sys.argv.pop(1) if len(sys.argv) > 1 else "packet"
    logging.getLogger().addHandler(logging.NullHandler())  # bad values are expected: no log spam
    errors = targets.Errors().__enter__()
    if which == "packet":
        handlers = [targets.make_handler(0), targets.make_handler(100)]
        loop = asyncio.new_event_loop()

        def one(data: bytes) -> None:
            if not data:
                return
            handler = handlers[data[0] & 1]
            targets.check_packet(handler, data[1:], "tcp" if data[0] & 2 else "udp", loop, errors)
    elif which == "record":
        def one(data: bytes) -> None:
            targets.check_decode(data)
    elif which == "store":
        def one(data: bytes) -> None:
            values = data.split(b"\x00\xff", 3)
            targets.check_store(list(zip(KEYS, values)), targets.SETTINGS[len(data) & 1], errors)
    else:
        raise SystemExit(f"unknown target {which!r}: packet, record or store")
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
