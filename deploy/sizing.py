"""Memory sizing of the DNS pod from the cluster size, fitted to bench/scale.py runs.

    MiB = a + b * services / 1000 + c * endpoints / 1000

per container (kube2sky, skydns per worker, etcd), where services counts every Service and
endpoints every ready endpoint address of headless services (the ones that get records of
their own). The coefficients are fitted to the peak RSS (VmHWM) of three runs of
bench/scale.py (1k services + 1k endpoints, 10k + 10k, 10k + 100k; figures in
bench/README.md), so the formula covers the first sync, the relist after a 410 and the
churn phase, not only the steady state.

Rules:
1. Stdlib only, pure: `python3 deploy/render.py` imports it without a venv.
2. Requests are the formula (the measured peak); limits add HEADROOM (a quarter) and round up
   to 16 MiB; never below the floors (an empty cluster still runs the interpreter and etcd).
3. etcd's quota (--quota-backend-bytes) is 4x the measured database size for the cluster
   (room for the history kept between compactions and for a full rewrite), at least 256 MiB.
"""

from __future__ import annotations

import dataclasses
import math

# (a, b, c): MiB, MiB per 1,000 services, MiB per 1,000 endpoints; fitted in bench/README.md.
FORMULAS = {
    "kube2sky": (77.0, 3.34, 0.66),
    "skydns": (51.7, 3.79, 2.54),
    "etcd": (30.9, 3.59, 4.52),
}
# etcd database size (MiB) per 1,000 services and per 1,000 endpoints, same runs.
DB_FORMULA = (1.0, 0.62, 0.60)
HEADROOM = 1.25
FLOORS = {"kube2sky": 96, "skydns": 64, "etcd": 64}
QUOTA_FLOOR = 256
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
    return a + b * services / 1000 + c * endpoints / 1000


def _round_up(value: float, step: int = 16) -> int:
    return int(math.ceil(value / step) * step)


def memory(component: str, services: int, endpoints: int) -> Memory:
    """Request (the formula) and limit (with headroom) of a component, in MiB."""
    need = max(mib(component, services, endpoints), FLOORS[component])
    request = _round_up(need, 8)
    return Memory(request=request, limit=_round_up(need * HEADROOM))


def etcd_quota_bytes(services: int, endpoints: int) -> int:
    """--quota-backend-bytes for a cluster size (4x the database, at least 256 MiB)."""
    a, b, c = DB_FORMULA
    db = a + b * services / 1000 + c * endpoints / 1000
    return max(QUOTA_FLOOR, _round_up(4 * db, 64)) * 2**20


def check(services: int, endpoints: int) -> None:
    """ValueError when a size is not a whole number >= 0."""
    for name, value in (("services", services), ("endpoints", endpoints)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"bad --{name} {value!r}: a whole number >= 0")
