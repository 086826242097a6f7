"""probing: reply judgement tables, real DNS probes against a loopback responder, real commands."""

from __future__ import annotations

import asyncio
import io

import dns.message
import dns.rcode
import dns.rrset
import pytest

from healthz import probing, verdict
from healthz import settings as settings_
from tests import procs
from tests.healthz import responder

R = verdict.Reason


def reply(qname: str, qtype: str, rcode: str = "NOERROR", answers: tuple[str, ...] = ()) -> dns.message.Message:
    """A reply built from zone-file lines like "a.b. 30 IN A 10.0.0.1"."""
    response = dns.message.make_response(dns.message.make_query(qname, qtype))
    response.set_rcode(dns.rcode.from_text(rcode))
    for line in answers:
        name, ttl, klass, rtype, *rdata = line.split()
        response.answer.append(dns.rrset.from_text(name, int(ttl), klass, rtype, " ".join(rdata)))
    return response


K = "kubernetes.default.svc.cluster.local."
EVALUATE = {
    "one answer ok": ("k=kubernetes.default.svc.cluster.local@127.0.0.1", reply(K, "A", answers=(f"{K} 30 IN A 10.96.0.1",)),
                      R.OK, "NOERROR"),
    "nxdomain": ("k=kubernetes.default.svc.cluster.local@127.0.0.1", reply(K, "A", "NXDOMAIN"), R.RCODE,
                 "NXDOMAIN for kubernetes.default.svc.cluster.local./A at 127.0.0.1:53, expected NOERROR"),
    "servfail": ("k=kubernetes.default.svc.cluster.local@127.0.0.1", reply(K, "A", "SERVFAIL"), R.RCODE, "SERVFAIL"),
    "nodata": ("k=kubernetes.default.svc.cluster.local@127.0.0.1", reply(K, "A"), R.NO_ANSWER,
               "0 answers"),
    "nodata accepted with min-answers=0": ("k=kubernetes.default.svc.cluster.local@127.0.0.1,min-answers=0",
                                           reply(K, "A"), R.OK, "NOERROR"),
    "cname only is no answer": ("k=kubernetes.default.svc.cluster.local@127.0.0.1",
                                reply(K, "A", answers=(f"{K} 30 IN CNAME other.",)), R.NO_ANSWER, "0 answers"),
    "expected address present": ("k=kubernetes.default.svc.cluster.local@127.0.0.1,expect=10.96.0.1",
                                 reply(K, "A", answers=(f"{K} 30 IN A 10.96.0.2 ", f"{K} 30 IN A 10.96.0.1")),
                                 R.OK, "10.96.0.1"),
    "expected address missing": ("k=kubernetes.default.svc.cluster.local@127.0.0.1,expect=10.96.0.1",
                                 reply(K, "A", answers=(f"{K} 30 IN A 10.96.0.2",)), R.MISMATCH,
                                 "answered [10.96.0.2], missing 10.96.0.1"),
    "expected v6 compressed": ("k=kubernetes.default.svc.cluster.local/AAAA@::1,expect=fd00:0:0::1",
                               reply(K, "AAAA", answers=(f"{K} 30 IN AAAA fd00::1",)), R.OK, "fd00::1"),
    "expect nxdomain gets nxdomain": ("gone=kubernetes.default.svc.cluster.local@127.0.0.1,rcode=NXDOMAIN",
                                      reply(K, "A", "NXDOMAIN"), R.OK, "NXDOMAIN"),
    "expect nxdomain gets noerror": ("gone=kubernetes.default.svc.cluster.local@127.0.0.1,rcode=NXDOMAIN",
                                     reply(K, "A", answers=(f"{K} 30 IN A 10.96.0.1",)), R.RCODE, "expected NXDOMAIN"),
}


@pytest.mark.parametrize(("spec", "response", "reason", "detail"), EVALUATE.values(), ids=EVALUATE.keys())
def test_evaluate(spec: str, response: dns.message.Message, reason: R, detail: str) -> None:
    got_reason, got_detail = probing.evaluate(settings_.parse_probe(spec), response)
    assert got_reason is reason
    assert detail in got_detail and "\n" not in got_detail


RECORDS = {(K, "A"): ["10.96.0.1"], ("txt.cluster.local.", "TXT"): ['"hello"']}
ASK = {
    "answer": ("answer", "", R.OK, "[10.96.0.1]", (1, 0)),
    "expect ok": ("answer", ",expect=10.96.0.1", R.OK, "10.96.0.1", (1, 0)),
    "silent -> timeout": ("silent", ",timeout=200ms", R.TIMEOUT, "no reply within 0.2s", (1, 0)),
    "servfail -> rcode": ("servfail", "", R.RCODE, "SERVFAIL", (1, 0)),
    "truncated -> tcp": ("truncate", "", R.OK, "[10.96.0.1]", (1, 1)),
    "tcp option": ("answer", ",tcp", R.OK, "[10.96.0.1]", (0, 1)),
}


@pytest.mark.parametrize(("mode", "options", "reason", "detail", "counts"), ASK.values(), ids=ASK.keys())
def test_ask_real_socket(mode: str, options: str, reason: R, detail: str, counts: tuple[int, int]) -> None:
    with responder.Responder(RECORDS, mode=mode) as server:
        probe = settings_.parse_probe(f"k={K}@127.0.0.1:{server.port}{options}")
        got_reason, got_detail = asyncio.run(probing.ask(probe))
        assert (got_reason, (server.udp_queries, server.tcp_queries)) == (reason, counts), got_detail
        assert detail in got_detail


def test_ask_nxdomain_names_the_rcode() -> None:
    with responder.Responder(RECORDS) as server:
        probe = settings_.parse_probe(f"gone=nope.cluster.local@127.0.0.1:{server.port}")
        reason, detail = asyncio.run(probing.ask(probe))
    assert reason is R.RCODE and detail.startswith("NXDOMAIN for nope.cluster.local./A")


COMMANDS = {
    "exit 0": ("echo healthz", 5.0, R.OK, "healthz"),
    "shell syntax (redirect, pipe)": ("echo one >/dev/null; echo two | tr a-z A-Z", 5.0, R.OK, "TWO"),
    "exit 1 with output and stderr": ("echo out; echo err >&2; exit 3", 5.0, R.EXIT,
                                      "exit status 3: out | err"),
    "no output": ("false", 5.0, R.EXIT, "exit status 1: (no output)"),
    "hung command is killed": ("sleep 30", 0.3, R.TIMEOUT, "killed: sleep 30"),
}


@pytest.mark.parametrize(("command", "timeout", "reason", "detail"), COMMANDS.values(), ids=COMMANDS.keys())
def test_execute(command: str, timeout: float, reason: R, detail: str) -> None:
    got_reason, got_detail = asyncio.run(
        probing.execute(settings_.CommandProbe(name="cmd", command=command), timeout))
    assert got_reason is reason and detail in got_detail, got_detail


def _stack(task: asyncio.Task) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


def test_checks_run_concurrently_each_on_its_period() -> None:
    """A silent server (timeouts) does not hold back a healthy probe or a command."""

    async def scenario(ok_port: int, silent_port: int) -> dict[str, verdict.Track]:
        config = settings_.Settings(
            period=0.05,
            probes=(settings_.parse_probe(f"ok={K}@127.0.0.1:{ok_port}"),
                    settings_.parse_probe(f"slow={K}@127.0.0.1:{silent_port},timeout=1s")),
            commands=(settings_.CommandProbe(name="cmd", command="true"),))
        board = probing.Board(config, probing.Metrics())
        tasks = [asyncio.create_task(probing.keep_probing(check, board)) for check in config.checks]
        await procs.async_wait_until(lambda: board.tracks["ok"].runs >= 3 and board.tracks["cmd"].runs >= 3,
                                     what="three runs of the fast checks")
        # Stop the probes. Python 3.11's asyncio.timeout/wait_for can swallow a cancel that
        # lands as their own timeout expires, leaving keep_probing asleep for good (seen here:
        # "Task cancelling ... keep_probing ... asyncio.sleep"), so cancel again until they end,
        # within a bound; what this test checks is the probes' independence, above.
        pending = set(tasks)
        deadline = asyncio.get_running_loop().time() + 10 * procs.TIMEOUT_SCALE
        while pending and asyncio.get_running_loop().time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        assert not pending, "probe tasks still running after cancel:\n" + "\n".join(map(_stack, pending))
        return board.tracks

    with responder.Responder(RECORDS) as ok, responder.Responder(mode="silent") as silent:
        tracks = asyncio.run(scenario(ok.port, silent.port))
    assert tracks["ok"].last is not None and tracks["ok"].last.ok
    assert tracks["cmd"].last is not None and tracks["cmd"].last.ok
    assert tracks["slow"].runs <= 1  # still waiting for its first timeout, or just had it


def test_board_metrics_and_healthy_gauge() -> None:
    config = settings_.Settings(probes=(settings_.parse_probe(f"k={K}@127.0.0.1"),), latency=30.0)
    clock = [100.0]
    metrics = probing.Metrics()
    board = probing.Board(config, metrics, clock=lambda: clock[0])
    sample = metrics.registry.get_sample_value
    assert sample("healthz_probe_healthy", {"probe": "k"}) == 1.0
    board.put(verdict.Result("k", R.TIMEOUT, "no reply", 2.0, 102.0, 0.0))
    assert sample("healthz_probe_healthy", {"probe": "k"}) == 0.0
    assert sample("healthz_probe_failures_total", {"probe": "k", "reason": "timeout"}) == 1.0
    board.put(verdict.Result("k", R.OK, "fine", 0.001, 104.0, 0.0))
    assert sample("healthz_probe_healthy", {"probe": "k"}) == 1.0
    assert sample("healthz_probe_duration_seconds_count", {"probe": "k"}) == 2.0
    clock[0] = 200.0
    board.refresh()
    assert sample("healthz_probe_healthy", {"probe": "k"}) == 0.0  # stale
