"""A running skydns against fresh answers, through random writes to a real etcd.

Random puts and deletes go to etcd (etcdctl); after each one, once skydns's mirror has reached
that revision (its SOA serial), random queries near the changed keys (UDP and TCP, 0x20 case,
EDNS sizes, each asked twice so that the second answer comes from the cache) must get exactly
the bytes an uncached reference computes for the same records: a transport.Handler without a
cache over a store built from what was written. Seeded and reproducible.
"""

from __future__ import annotations

import json
import random
import socket
import struct

import dns.message
import pytest

from skydns import metrics, settings as settings_mod, store, transport
from tests import procs, skydnsproc
from tests.skydns import test_anscache_diff as gen

pytestmark = pytest.mark.integration

SETTINGS = settings_mod.Settings(domains=("cluster.local.",), round_robin=False)


def _ask(port: int, data: bytes, proto: str) -> bytes:
    timeout = 2 * procs.TIMEOUT_SCALE
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, ("127.0.0.1", port))
            return sock.recv(65535)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(data)) + data)
        (length,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
        return sock.recv(length, socket.MSG_WAITALL)


def _revision(out: str) -> int:
    return int(json.loads(out)["header"]["revision"])


# The default budget, and the smallest (1 MiB: a few hundred answers, the oldest evicted
# as the run goes; transport rule 3e) with the entry count cut too.
BUDGETS = {"default-budget": (), "small-budget": ("--answer-cache-mib=1", "--answer-cache-size=40")}


@pytest.mark.parametrize("budget", sorted(BUDGETS))
@pytest.mark.parametrize("seed", [11, 12])
def test_running_server_answers_like_a_fresh_reference(seed, budget):
    rng = random.Random(seed)
    with procs.running_etcd() as etcd, skydnsproc.running(etcd.url, "-round-robin=false",
                                                           *BUDGETS[budget]) as server:
        model: dict[str, bytes] = {}
        written: list[str] = []
        history: list[tuple[bytes, str]] = []
        asked = 0
        for _step in range(40):
            if written and rng.random() < 0.3:
                key = rng.choice(written[-8:])
                revision = _revision(etcd.ctl("del", key, "-w", "json"))
                model.pop(key, None)
            else:
                key, value = gen._key(rng), gen._value(rng)
                revision = _revision(etcd.ctl("put", key, value.decode(), "-w", "json"))
                model[key] = value
                written.append(key)

            def caught_up() -> bool:
                soa = server.udp("cluster.local.", "SOA")
                return bool(soa.answer) and soa.answer[0][0].serial >= revision
            procs.wait_until(caught_up, timeout=10, what=f"skydns at revision {revision}")

            view = store.Store()
            view.replace(sorted(model.items()), revision)
            reference = transport.Handler(SETTINGS, view, None, stats=metrics.DnsStats(), cache_size=0)
            for _ in range(6):
                if history and rng.random() < 0.5:
                    data, proto = rng.choice(history[-30:])  # asked before: maybe cached, maybe stale
                else:
                    data, proto = gen._query(rng, written)
                    history.append((data, proto))
                want = reference.handle(data, proto)
                for _ in range(2):  # the second answer is a cache hit
                    got = _ask(server.port, data, proto)
                    asked += 1
                    assert got == want, (
                        f"seed {seed}, after {key} at revision {revision}:\n"
                        f"skydns:\n{dns.message.from_wire(got)}\nreference:\n{dns.message.from_wire(want)}")
        assert asked >= 400
