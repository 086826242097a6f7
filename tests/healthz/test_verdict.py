"""verdict.judge tables: results + injected now -> HTTP code and body."""

from __future__ import annotations

import dataclasses

import pytest

from healthz import settings as settings_
from healthz import verdict

R = verdict.Reason
S = verdict.Status
BASE = settings_.Settings(latency=30.0, failure_threshold=1, pending_ok=True)
STARTED = 1000.0


def res(reason: R = R.OK, at: float = 1010.0, detail: str = "NOERROR for k/A: [10.96.0.1]",
        name: str = "k", latency: float = 0.002) -> verdict.Result:
    return verdict.Result(name=name, reason=reason, detail=detail, latency=latency, at=at, wall=at + 1.7e9)


def track(*results: verdict.Result) -> verdict.Track:
    out = verdict.Track()
    for result in results:
        out = verdict.record(out, result)
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    tracks: dict
    now: float
    code: int
    body_has: tuple[str, ...] = ()
    status: tuple[S, ...] = ()
    exact: str | None = None
    config: settings_.Settings = BASE
    names: tuple[str, ...] = ("k",)


ROWS = {
    "fresh ok -> exactly ok": Row({"k": track(res())}, 1011.0, 200, exact="ok\n", status=(S.OK,)),
    "ok at the latency edge": Row({"k": track(res(at=1010.0))}, 1040.0, 200, exact="ok\n"),
    "ok just past latency -> stale": Row(
        {"k": track(res(at=1010.0))}, 1040.5, 503, ("k: result too old", "limit 30s", "last result ok"),
        (S.STALE,)),
    "stale failure says too old and the failure": Row(
        {"k": track(res(R.TIMEOUT, detail="no reply within 2s"))}, 1100.0, 503,
        ("result too old", "timeout: no reply within 2s"), (S.STALE,)),
    "timeout": Row({"k": track(res(R.TIMEOUT, detail="no reply within 2s for k./A"))}, 1011.0, 503,
                   ("unhealthy", "k: timeout: no reply within 2s"), (S.FAILING,)),
    "rcode NXDOMAIN named": Row({"k": track(res(R.RCODE, detail="NXDOMAIN for k./A, expected NOERROR"))},
                                1011.0, 503, ("k: rcode: NXDOMAIN",), (S.FAILING,)),
    "command output in body": Row({"cmd": track(res(R.EXIT, name="cmd", detail="exit status 1: boom"))},
                                  1011.0, 503, ("cmd: exit: exit status 1: boom",), names=("cmd",)),
    "recovered after failure": Row({"k": track(res(R.TIMEOUT, at=1005.0), res(at=1010.0))}, 1011.0, 200,
                                   exact="ok\n"),
    "pending in grace, pending_ok": Row({}, 1005.0, 200, ("ok (no result yet, starting)", "k: no result yet"),
                                        (S.PENDING,)),
    "pending in grace, pending_fail": Row({}, 1005.0, 503, ("k: no result yet, starting",), (S.PENDING,),
                                          config=dataclasses.replace(BASE, pending_ok=False)),
    "pending after grace -> 503": Row({}, 1031.0, 503, ("no result yet after 31.0s",), (S.PENDING,)),
    "threshold 3: one failure is degraded, 200": Row(
        {"k": track(res(), res(R.TIMEOUT, at=1012.0))}, 1012.5, 200,
        ("ok\n", "k: timeout", "1 consecutive failure, unhealthy at 3"), (S.DEGRADED,),
        config=dataclasses.replace(BASE, failure_threshold=3)),
    "threshold 3: three failures fail": Row(
        {"k": track(res(R.TIMEOUT, at=1010.0), res(R.RCODE, at=1012.0), res(R.TIMEOUT, at=1014.0))}, 1014.5, 503,
        ("k: timeout", "[3 consecutive failures]"), (S.FAILING,),
        config=dataclasses.replace(BASE, failure_threshold=3)),
    "threshold 3: success resets streak": Row(
        {"k": track(res(R.TIMEOUT, at=1), res(R.TIMEOUT, at=2), res(at=3), res(R.TIMEOUT, at=1014.0))}, 1014.5,
        200, ("1 consecutive failure",), (S.DEGRADED,), config=dataclasses.replace(BASE, failure_threshold=3)),
    "two checks: one failing names only it": Row(
        {"a": track(res(name="a")), "b": track(res(R.RCODE, name="b", detail="SERVFAIL for b./A"))}, 1011.0, 503,
        ("b: rcode: SERVFAIL",), (S.OK, S.FAILING), names=("a", "b")),
    "two checks: one pending one ok": Row({"a": track(res(name="a"))}, 1011.0, 200,
                                          ("ok\n", "b: no result yet"), (S.OK, S.PENDING), names=("a", "b")),
    "output flag answers the detail": Row({"cmd": track(res(name="cmd", detail="Server: 10.0.0.10"))}, 1011.0,
                                          200, exact="Server: 10.0.0.10", names=("cmd",),
                                          config=dataclasses.replace(BASE, output=True)),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_judge(row: Row) -> None:
    health = verdict.judge(row.tracks, row.names, row.now, STARTED, row.config)
    assert health.code == row.code
    assert health.ok == (row.code == 200)
    if row.exact is not None:
        assert health.body == row.exact
    for text in row.body_has:
        assert text in health.body, health.body
    if row.status:
        assert tuple(check.status for check in health.checks) == row.status
    if row.names and row.code == 503:
        for check in health.checks:
            assert (f"{check.name}:" in health.body) == (not check.ok)


def test_record_counts_streaks() -> None:
    t = track(res(R.TIMEOUT), res(R.RCODE))
    assert (t.failures, t.runs, t.last_ok) == (2, 2, None)
    ok = res(at=1020.0)
    t = verdict.record(t, ok)
    assert (t.failures, t.runs, t.last_ok) == (0, 3, ok)


def test_to_json_has_last_result_latency_and_time() -> None:
    health = verdict.judge({"k": track(res(latency=0.25, at=1010.0))}, ("k", "p"), 1012.0, STARTED, BASE)
    data = verdict.to_json(health, now=1012.0, now_wall=5000.0)
    assert data["status"] == "ok" and data["code"] == 200
    k = data["checks"]["k"]
    assert k["status"] == "ok" and k["last"]["latency_seconds"] == 0.25
    assert k["last"]["time"] == 4998.0 and k["last"]["age_seconds"] == 2.0
    assert data["checks"]["p"]["status"] == "pending" and data["checks"]["p"]["last"] is None
