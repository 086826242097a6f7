"""healthz verdicts: probe results in, HTTP status and body out.

PURE: no I/O, no clock, no asyncio. `now` is always an argument (monotonic seconds, the
same clock as Result.at). Rules:
1. A check is healthy when its last `failure_threshold` results did not all fail and its
   last result is at most `latency` seconds old.
2. A result older than `latency` is a failure with reason STALE ("result too old"),
   whatever it said.
3. Before a check's first result: PENDING. During the start-up grace (`latency` seconds
   since start) it is ok when settings.pending_ok, else a failure; after the grace it is a
   failure like a stale result.
4. The body is exactly "ok\n" when everything is fine (exechealthz's "ok" plus a newline, so
   successive curls do not run together; probes read only the status); anything
   else names every check that is not fine, one line each, with the reason and detail.
"""

from __future__ import annotations

import dataclasses
import enum

from healthz import settings as settings_


class Reason(enum.Enum):
    """Why a result or a check is not fine; values are the metric label and JSON text."""

    OK = "ok"
    TIMEOUT = "timeout"            # no reply (or command still running) within the timeout
    RCODE = "rcode"                # a reply with an unexpected rcode (NXDOMAIN, SERVFAIL...)
    NO_ANSWER = "no_answer"        # the expected rcode, but fewer answers than required
    MISMATCH = "mismatch"          # answers, but an expected address is missing
    NETWORK = "network"            # connection refused, unreachable, bad reply
    EXIT = "exit"                  # a command exited non-zero
    STALE = "stale"                # the last result is older than -latency
    PENDING = "pending"            # no result yet


class Status(enum.Enum):
    """A check's state as shown in JSON."""

    OK = "ok"              # last result fine and fresh
    DEGRADED = "degraded"  # failing, but fewer consecutive failures than the threshold
    FAILING = "failing"    # unhealthy
    STALE = "stale"        # unhealthy: result too old
    PENDING = "pending"    # no result yet (ok or not depends on pending_ok and the grace)


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one probe run."""

    name: str
    reason: Reason
    # Human text: rcode and answers, command output, error; one line.
    detail: str
    # Seconds the run took.
    latency: float
    # Monotonic seconds when the run finished (compared with `now`).
    at: float
    # Unix time when the run finished (shown to humans).
    wall: float

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


@dataclasses.dataclass(frozen=True, slots=True)
class Track:
    """What is remembered about one check: its last result and the failure streak."""

    last: Result | None = None
    # Consecutive failed results up to and including `last`.
    failures: int = 0
    # The last successful result, if any (for JSON).
    last_ok: Result | None = None
    runs: int = 0


def record(track: Track, result: Result) -> Track:
    """The track after one more result."""
    if result.ok:
        return Track(last=result, failures=0, last_ok=result, runs=track.runs + 1)
    return Track(last=result, failures=track.failures + 1, last_ok=track.last_ok, runs=track.runs + 1)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckHealth:
    """One check's verdict."""

    name: str
    ok: bool
    status: Status
    reason: Reason
    # One line for the body, without the name.
    message: str
    track: Track
    # Seconds since the last result (None before the first one).
    age: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    """The verdict for a set of checks: HTTP code and body."""

    ok: bool
    code: int
    body: str
    checks: tuple[CheckHealth, ...]


def describe(result: Result) -> str:
    """One line about a result: "timeout: no reply ... (latency 2.001s)"."""
    if result.ok:
        return f"ok: {result.detail} (latency {result.latency:.3f}s)"
    return f"{result.reason.value}: {result.detail} (latency {result.latency:.3f}s)"


def judge_check(name: str, track: Track, now: float, started: float,
                config: settings_.Settings) -> CheckHealth:
    """The verdict for one check at `now` (monotonic seconds; `started` is the process start)."""
    last = track.last
    if last is None:
        waited = now - started
        if waited <= config.latency:
            return CheckHealth(name, config.pending_ok, Status.PENDING, Reason.PENDING,
                               f"no result yet, starting ({waited:.1f}s of {config.latency:g}s grace)",
                               track, None)
        return CheckHealth(name, False, Status.PENDING, Reason.PENDING,
                           f"no result yet after {waited:.1f}s (limit {config.latency:g}s)", track, None)
    age = max(0.0, now - last.at)
    if age > config.latency:
        return CheckHealth(name, False, Status.STALE, Reason.STALE,
                           f"result too old: {age:.1f}s old (limit {config.latency:g}s); "
                           f"last result {describe(last)}", track, age)
    if last.ok:
        return CheckHealth(name, True, Status.OK, Reason.OK, describe(last), track, age)
    streak = f"{track.failures} consecutive failure{'s' if track.failures != 1 else ''}"
    if track.failures < config.failure_threshold:
        return CheckHealth(name, True, Status.DEGRADED, last.reason,
                           f"{describe(last)} [{streak}, unhealthy at {config.failure_threshold}]",
                           track, age)
    suffix = f" [{streak}]" if config.failure_threshold > 1 else ""
    return CheckHealth(name, False, Status.FAILING, last.reason, describe(last) + suffix, track, age)


def judge(tracks: dict[str, Track], names: tuple[str, ...], now: float, started: float,
          config: settings_.Settings) -> Health:
    """The verdict for the checks `names` (in that order) at `now`.

    Unknown names are pending forever (they never get results); the caller routes only
    known names here.
    """
    checks = tuple(judge_check(name, tracks.get(name, Track()), now, started, config) for name in names)
    ok = all(check.ok for check in checks)
    if ok and all(check.status is Status.OK for check in checks):
        if config.output and len(checks) == 1 and checks[0].track.last is not None:
            body = checks[0].track.last.detail
        else:
            body = "ok\n"
    elif ok:
        notes = [f"{c.name}: {c.message}" for c in checks if c.status is not Status.OK]
        if all(c.status is Status.PENDING for c in checks):
            body = "ok (no result yet, starting)\n" + "\n".join(notes) + "\n"
        else:
            body = "ok\n" + "\n".join(notes) + "\n"
    else:
        lines = [f"{c.name}: {c.message}" for c in checks if not c.ok]
        body = "unhealthy\n" + "\n".join(lines) + "\n"
    return Health(ok=ok, code=200 if ok else 503, body=body, checks=checks)


def to_json(health: Health, now: float, now_wall: float) -> dict[str, object]:
    """A JSON-ready dict: overall status and, per check, last result, latency and time."""

    def result_dict(result: Result | None) -> dict[str, object] | None:
        if result is None:
            return None
        return {
            "ok": result.ok,
            "reason": result.reason.value,
            "detail": result.detail,
            "latency_seconds": round(result.latency, 6),
            "time": round(now_wall - (now - result.at), 3),
            "age_seconds": round(max(0.0, now - result.at), 3),
        }

    return {
        "status": "ok" if health.ok else "unhealthy",
        "code": health.code,
        "checks": {
            check.name: {
                "ok": check.ok,
                "status": check.status.value,
                "reason": check.reason.value,
                "message": check.message,
                "consecutive_failures": check.track.failures,
                "runs": check.track.runs,
                "last": result_dict(check.track.last),
                "last_ok": result_dict(check.track.last_ok),
            }
            for check in health.checks
        },
    }
