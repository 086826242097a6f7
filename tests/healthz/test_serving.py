"""serving: route tables over fixed results, and the HTTP edge on a real loopback socket."""

from __future__ import annotations

import asyncio
import json

import prometheus_client
import pytest

from healthz import serving, verdict
from healthz import settings as settings_

R = verdict.Reason
NOW = 1010.0
CONFIG = settings_.Settings(
    address="127.0.0.1", port=0,
    probes=(settings_.parse_probe("kubernetes=kubernetes.default.svc.cluster.local@127.0.0.1"),
            settings_.parse_probe("gone=nope.cluster.local@127.0.0.1")),
    commands=(settings_.CommandProbe("cmd1", "true", "/healthz-dnsmasq"),
              settings_.CommandProbe("cmd2", "false", "/healthz-kubedns")))


def result(name: str, reason: R = R.OK, detail: str = "fine") -> verdict.Result:
    return verdict.Result(name, reason, detail, 0.001, NOW - 1, 1.7e9)


TRACKS = {
    "kubernetes": verdict.record(verdict.Track(), result("kubernetes", detail="NOERROR [10.96.0.1]")),
    "gone": verdict.record(verdict.Track(), result("gone", R.RCODE, "NXDOMAIN for nope.cluster.local./A")),
    "cmd1": verdict.record(verdict.Track(), result("cmd1")),
    "cmd2": verdict.record(verdict.Track(), result("cmd2", R.EXIT, "exit status 1: boom")),
}


def server() -> serving.Server:
    return serving.Server(CONFIG, lambda: TRACKS, started=NOW - 100, registry=prometheus_client.CollectorRegistry(),
                          clock=lambda: NOW)


ROUTES = {
    "/healthz all, two failing": ("GET", "/healthz", 503, ("gone: rcode: NXDOMAIN", "cmd2: exit: exit status 1: boom")),
    "/healthz/<name> ok": ("GET", "/healthz/kubernetes", 200, ("ok",)),
    "/healthz/<name> failing": ("GET", "/healthz/gone", 503, ("NXDOMAIN",)),
    "-url path ok": ("GET", "/healthz-dnsmasq", 200, ("ok",)),
    "-url path failing": ("GET", "/healthz-kubedns", 503, ("boom",)),
    "trailing slash": ("GET", "/healthz/kubernetes/", 200, ("ok",)),
    "HEAD": ("HEAD", "/healthz/kubernetes", 200, ("ok",)),
    "unknown check": ("GET", "/healthz/nope", 404, ("not found",)),
    "unknown path": ("GET", "/nope", 404, ("not found",)),
    "POST": ("POST", "/healthz", 405, ("method not allowed",)),
    "index": ("GET", "/", 200, ('href="/healthz/gone"', 'href="/healthz-kubedns"')),
    "metrics": ("GET", "/metrics", 200, ("healthz_http_requests_total",)),
}


@pytest.mark.parametrize(("method", "target", "code", "body_has"), ROUTES.values(), ids=ROUTES.keys())
def test_route(method: str, target: str, code: int, body_has: tuple[str, ...]) -> None:
    got_code, _, body, _ = server().route(method, target)
    assert got_code == code
    for text in body_has:
        assert text in body.decode()


def test_ok_body_is_exactly_ok() -> None:
    assert server().route("GET", "/healthz/kubernetes")[2] == b"ok\n"


def test_json() -> None:
    code, ctype, body, _ = server().route("GET", "/healthz?format=json")
    data = json.loads(body)
    assert (code, ctype, data["status"]) == (503, "application/json", "unhealthy")
    assert data["checks"]["gone"]["reason"] == "rcode"
    assert data["checks"]["kubernetes"]["last"]["latency_seconds"] == 0.001
    assert set(data["checks"]) == {"kubernetes", "gone", "cmd1", "cmd2"}


async def fetch(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return data


def test_http_edge_on_a_real_socket() -> None:
    async def scenario() -> list[bytes]:
        srv = server()
        await srv.start()
        try:
            return [
                await fetch(srv.port, b"GET /healthz/kubernetes HTTP/1.1\r\nHost: x\r\n\r\n"),
                await fetch(srv.port, b"HEAD /healthz HTTP/1.0\r\n\r\n"),
                await fetch(srv.port, b"garbage\r\n\r\n"),
                await fetch(srv.port, b"GET /healthz"),  # client gives up mid-request
                await fetch(srv.port, b"GET /healthz/gone HTTP/1.1\r\n\r\n"),
            ]
        finally:
            await srv.close()

    ok, head, bad, cut, gone = asyncio.run(scenario())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
    assert head.startswith(b"HTTP/1.1 503 ") and head.endswith(b"\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert cut == b""
    assert gone.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"NXDOMAIN" in gone
