"""Memory sizing of the DNS pod from the cluster size, fitted to benchmark runs.

    MiB = a + b * services / 1000 + c * endpoints / 1000

per container (kube2sky, skydns per worker, etcd), where services counts every Service and
endpoints every ready endpoint address of headless Services (the ones that get records of
their own). The coefficients go exactly through the peak RSS (VmHWM) measured at three sizes
(1k services + 1k endpoints, 10k + 10k, 10k + 100k; figures and commands in bench/README.md,
"Sizing"): kube2sky and etcd from bench/scale.py (first sync, restart, churn and a forced
410), skydns the higher of bench/scale.py and bench/skydns_load.py (a relist after an etcd
restart, the new snapshot built aside), so the formula covers the peaks, not only the steady
state.

Rules:
1. Stdlib only, pure: `python3 deploy/render.py` imports it without a venv.
2. Requests are the formula (the measured peak) rounded up to 8 MiB; limits add HEADROOM (a
   quarter) to the request and round up to 16 MiB; never below the floors (an empty cluster
   still runs the interpreter and etcd).
3. etcd's quota (--quota-backend-bytes) is 4x the measured database size for the cluster
   (room for the history kept between compactions and for a full rewrite), at least 256 MiB.
4. etcd's Go garbage collector works against its memory request, not at every doubling of the
   live heap: GOMEMLIMIT is the request minus the expected database (bbolt maps the database
   file, and those pages count in the container's memory but not in Go's) and minus
   GO_OUTSIDE (the binary and what else the process maps: 14 MiB measured), at least 32 MiB,
   and GOGC=off: the collector runs when the heap nears that limit (it still runs: "off" only
   drops the trigger at every doubling of the live heap). The request is the pod's anyway;
   etcd's RSS settles near it. A first sync of 337,000 keys made etcd spend about a fifth of
   its CPU collecting with the default GOGC=100 (bench/README.md, "kube2sky: fifth pass");
   the peak stays within the request. A live heap above the limit makes the collector run
   often (Go caps it at half the CPU) where GOGC=100 would have been OOM-killed; at 10k + 100k
   the live heap is under half the limit (Go's defaults peaked at 443-453 MiB of RSS, with a
   heap at most twice what is live).
5. skydns's caches come on top of its formula, whose runs asked few names: CACHES adds, per
   worker, 33 MiB for the answers of local names, the answer cache's default budget (skydns
   --answer-cache-mib 16) and what the memos of the miss path and the allocator keep beside
   it, measured as the RSS after every name of the cluster was asked once
   (bench/skydns_load.py --scan at 10k + 100k: 74 -> 106 MiB), and 16 MiB for the forwarded
   answers (--cache-mib 16). All are bounded whatever is asked (skydns/transport.py rule 3e,
   skydns/kept.py rule 4, skydns/fwdcache.py rule 4).
"""

from __future__ import annotations

import dataclasses
import math

# (a, b, c): MiB, MiB per 1,000 services, MiB per 1,000 endpoints; through the peaks
# (1k + 1k, 10k + 10k, 10k + 100k) of bench/README.md, "Sizing":
#   kube2sky 81, 115, 150 MiB; skydns 56, 63, 94 MiB; etcd 47, 113, 519 MiB.
FORMULAS = {
    "kube2sky": (77.2, 3.39, 0.39),
    "skydns": (55.2, 0.43, 0.34),
    "etcd": (39.7, 2.82, 4.51),
}
# etcd database size (MiB) per 1,000 services and per 1,000 endpoints, same runs.
DB_FORMULA = (1.0, 0.62, 0.60)
# Rule 5: MiB a component adds for its caches when every name is asked.
CACHES = {"skydns": 33 + 16}
HEADROOM = 1.25
FLOORS = {"kube2sky": 96, "skydns": 64, "etcd": 64}
QUOTA_FLOOR = 256
ETCD_GOGC = "off"
GOMEMLIMIT_FLOOR = 32
GO_OUTSIDE = 16
# The defaults: the large cluster of issue 12 (10,000 services, 100,000 endpoints).
DEFAULT_SERVICES = 10000
DEFAULT_ENDPOINTS = 100000


@dataclasses.dataclass(frozen=True, slots=True)
class Memory:
    """Memory of one container in MiB."""

    request: int
    limit: int


def mib(component: str, services: int, endpoints: int) -> float:
    """The formula: expected peak MiB of a component for a cluster size."""
    a, b, c = FORMULAS[component]
    return a + b * services / 1000 + c * endpoints / 1000 + CACHES.get(component, 0)


def _round_up(value: float, step: int = 16) -> int:
    return int(math.ceil(value / step) * step)


def memory(component: str, services: int, endpoints: int) -> Memory:
    """Request (the formula) and limit (with headroom) of a component, in MiB."""
    need = max(mib(component, services, endpoints), FLOORS[component])
    request = _round_up(need, 8)
    return Memory(request=request, limit=_round_up(request * HEADROOM))


def _database_mib(services: int, endpoints: int) -> float:
    a, b, c = DB_FORMULA
    return a + b * services / 1000 + c * endpoints / 1000


def etcd_quota_bytes(services: int, endpoints: int) -> int:
    """--quota-backend-bytes for a cluster size (4x the database, at least 256 MiB)."""
    return max(QUOTA_FLOOR, _round_up(4 * _database_mib(services, endpoints), 64)) * 2**20


def etcd_go_env(services: int, endpoints: int) -> dict[str, str]:
    """The Go runtime's memory settings for etcd (rule 4): GOGC and GOMEMLIMIT."""
    request = memory("etcd", services, endpoints).request
    heap = max(GOMEMLIMIT_FLOOR, int(request - _database_mib(services, endpoints) - GO_OUTSIDE))
    return {"GOGC": str(ETCD_GOGC), "GOMEMLIMIT": f"{heap}MiB"}


def check(services: int, endpoints: int) -> None:
    """ValueError when a size is not a whole number >= 0."""
    for name, value in (("services", services), ("endpoints", endpoints)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"bad --{name} {value!r}: a whole number >= 0")
