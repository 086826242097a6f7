"""healthz probing: run every check on its period and keep the last results.

EDGE (DNS over UDP/TCP, subprocesses, clock). Rules:
1. One asyncio task per check. A run starts every `period` seconds; a run that takes
   longer than the period is followed by the next one at once (back to back, as
   exechealthz did); runs of one check never overlap.
2. Nothing here runs because of an HTTP request: serving only reads Board.tracks.
3. A run never raises: every error becomes a Result with a Reason (timeout, rcode,
   network...), is logged naming the check, and is counted in healthz_probe_failures_total.
4. A DNS probe asks over UDP and repeats over TCP when the reply is truncated; the whole
   run is bounded by the probe's timeout. A command runs as `sh -c COMMAND` in its own
   process group, which is killed when it runs past its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import prometheus_client

from healthz import settings as settings_
from healthz import verdict

logger = logging.getLogger(__name__)

# Most characters of command output kept in a result (the tail is dropped).
MAX_OUTPUT = 2000
# Latency buckets, seconds: a local DNS answer is sub-millisecond; 10s covers slow commands.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The probe metrics, in their own registry (one per app, so tests can run several)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        self.duration = prometheus_client.Histogram(
            "healthz_probe_duration_seconds", "Time one probe run took, seconds (failures included).",
            ["probe"], buckets=BUCKETS, registry=self.registry)
        self.failures = prometheus_client.Counter(
            "healthz_probe_failures_total", "Failed probe runs by reason "
            "(timeout, rcode, no_answer, mismatch, network, exit).",
            ["probe", "reason"], registry=self.registry)
        self.healthy = prometheus_client.Gauge(
            "healthz_probe_healthy", "1 when the check is healthy by the /healthz rules, else 0.",
            ["probe"], registry=self.registry)


class Board:
    """The last results of every check; written by the probe tasks, read by serving."""

    def __init__(self, config: settings_.Settings, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.started = clock()
        self.tracks: dict[str, verdict.Track] = {check.name: verdict.Track() for check in config.checks}
        self._healthy: dict[str, bool | None] = {check.name: None for check in config.checks}
        for check in config.checks:
            metrics.duration.labels(check.name)
            metrics.healthy.labels(check.name).set(1 if config.pending_ok else 0)

    def put(self, result: verdict.Result) -> None:
        """Record one result: track, metrics, and a log line when health changes."""
        track = verdict.record(self.tracks.get(result.name, verdict.Track()), result)
        self.tracks[result.name] = track
        self.metrics.duration.labels(result.name).observe(result.latency)
        if not result.ok:
            self.metrics.failures.labels(result.name, result.reason.value).inc()
            logger.info("check %s failed: %s", result.name, verdict.describe(result))
        else:
            logger.debug("check %s: %s", result.name, verdict.describe(result))
        check = verdict.judge_check(result.name, track, result.at, self.started, self.config)
        self.metrics.healthy.labels(result.name).set(1 if check.ok else 0)
        before = self._healthy.get(result.name)
        self._healthy[result.name] = check.ok
        if before is not None and before != check.ok or before is None and not check.ok:
            if check.ok:
                logger.warning("check %s is healthy again: %s", result.name, check.message)
            else:
                logger.warning("check %s is unhealthy: %s", result.name, check.message)

    def refresh(self) -> None:
        """Re-judge staleness for the healthy gauge (called before a /metrics scrape)."""
        now = self.clock()
        for name, track in self.tracks.items():
            check = verdict.judge_check(name, track, now, self.started, self.config)
            self.metrics.healthy.labels(name).set(1 if check.ok else 0)


def evaluate(probe: settings_.DnsProbe, response: dns.message.Message) -> tuple[verdict.Reason, str]:
    """Judge one DNS reply against the probe's expectations -> (reason, one-line detail)."""
    rcode = dns.rcode.to_text(response.rcode())
    question = f"{probe.qname}/{probe.qtype} at {probe.target}"
    qtype = dns.rdatatype.from_text(probe.qtype)
    answers = [rdata for rrset in response.answer for rdata in rrset
               if probe.qtype == "ANY" or rrset.rdtype == qtype or rrset.rdtype == dns.rdatatype.CNAME]
    texts = [rdata.to_text() for rdata in answers
             if probe.qtype == "ANY" or rdata.rdtype == qtype]
    shown = ", ".join(texts[:5]) + (f" (+{len(texts) - 5} more)" if len(texts) > 5 else "")
    if rcode != probe.rcode:
        return verdict.Reason.RCODE, f"{rcode} for {question}, expected {probe.rcode}"
    wanted = [rdata for rdata in answers if probe.qtype == "ANY" or rdata.rdtype == qtype]
    if len(wanted) < probe.min_answers:
        return (verdict.Reason.NO_ANSWER,
                f"{rcode} with {len(wanted)} answers for {question}, expected at least {probe.min_answers}")
    if probe.expect:
        have = {settings_.normalize_rdata(text) for text in texts}
        missing = [item for item in probe.expect if item not in have]
        if missing:
            return (verdict.Reason.MISMATCH,
                    f"{question} answered [{shown}], missing {', '.join(missing)}")
    return verdict.Reason.OK, f"{rcode} for {question}: [{shown}]"


async def ask(probe: settings_.DnsProbe) -> tuple[verdict.Reason, str]:
    """Send the probe's query once (UDP, TCP on truncation) and judge the reply."""
    query = dns.message.make_query(probe.qname, probe.qtype)
    question = f"{probe.qname}/{probe.qtype} at {probe.target}"
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.tcp:
                response = await dns.asyncquery.tcp(query, probe.server, timeout=probe.timeout, port=probe.port)
            else:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query, probe.server, timeout=probe.timeout, port=probe.port)
    except (TimeoutError, dns.exception.Timeout):
        return verdict.Reason.TIMEOUT, f"no reply within {probe.timeout:g}s for {question}"
    except (OSError, EOFError) as exc:
        return verdict.Reason.NETWORK, f"{type(exc).__name__}: {exc} for {question}"
    except dns.exception.DNSException as exc:
        return verdict.Reason.NETWORK, f"bad reply for {question}: {type(exc).__name__}: {exc}"
    return evaluate(probe, response)


def _one_line(output: bytes) -> str:
    text = output.decode(errors="replace").strip()
    if len(text) > MAX_OUTPUT:
        text = text[:MAX_OUTPUT] + "..."
    return " | ".join(line.rstrip() for line in text.splitlines() if line.strip())


async def execute(command: settings_.CommandProbe, timeout: float) -> tuple[verdict.Reason, str]:
    """Run `sh -c command`, bounded by timeout seconds -> (reason, output as one line)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", command.command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return verdict.Reason.EXIT, f"cannot run sh: {exc}"
    try:
        async with asyncio.timeout(timeout or None):
            output, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.CancelledError):
            raise
        return verdict.Reason.TIMEOUT, f"command still running after {timeout:g}s, killed: {command.command}"
    text = _one_line(output)
    if proc.returncode != 0:
        return verdict.Reason.EXIT, f"exit status {proc.returncode}: {text or '(no output)'}"
    return verdict.Reason.OK, text or "exit status 0"


async def run_once(check: settings_.Check, config: settings_.Settings,
                   clock: Callable[[], float] = time.monotonic) -> verdict.Result:
    """One run of one check -> Result; never raises (except cancellation)."""
    start = clock()
    try:
        if isinstance(check, settings_.DnsProbe):
            reason, detail = await ask(check)
        else:
            reason, detail = await execute(check, config.command_timeout(check))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a probe run never ends the process
        logger.exception("check %s: unexpected error", check.name)
        reason, detail = verdict.Reason.NETWORK, f"unexpected {type(exc).__name__}: {exc}"
    end = clock()
    return verdict.Result(name=check.name, reason=reason, detail=detail, latency=end - start,
                          at=end, wall=time.time())


async def keep_probing(check: settings_.Check, board: Board) -> None:
    """Run one check forever, once per period (back to back when slower)."""
    period = board.config.period
    while True:
        start = board.clock()
        board.put(await run_once(check, board.config, board.clock))
        await asyncio.sleep(max(0.0, start + period - board.clock()))
