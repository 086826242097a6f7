"""healthz serving: a tiny HTTP/1.1 server over asyncio streams.

EDGE. Rules:
1. A request only reads the last results (a `tracks()` callable) and judges them with
   verdict.judge; it never starts a probe, so a flood of requests sends no DNS queries.
2. Routes: /healthz (every check, unless a -url claimed /healthz), /healthz/<name> (one
   check), every -url path, /metrics (Prometheus text), / (index). `?format=json` on a
   health path answers JSON. GET and HEAD only; anything else is 405, unknown paths 404.
3. Health answers are 200 or 503 only, text/plain, "ok\n" when all is well.
4. One request per connection (Connection: close); bad or slow requests are dropped
   without disturbing the rest; a request never raises out of the handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Callable

import prometheus_client

from healthz import settings as settings_
from healthz import verdict

logger = logging.getLogger(__name__)

# Seconds a client may take to send its request line and headers.
READ_TIMEOUT = 10.0
# Largest request head accepted, bytes.
MAX_HEAD = 16384

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class Server:
    """Answers health and metrics requests from the board's last results."""

    def __init__(self, config: settings_.Settings, tracks: Callable[[], dict[str, verdict.Track]],
                 started: float, registry: prometheus_client.CollectorRegistry,
                 before_scrape: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.tracks = tracks
        self.started = started
        self.registry = registry
        self.before_scrape = before_scrape
        self.clock = clock
        self.paths = config.paths()
        self.names = tuple(check.name for check in config.checks)
        self.requests = prometheus_client.Counter(
            "healthz_http_requests_total", "HTTP requests served, by path kind and status code.",
            ["handler", "code"], registry=registry)
        self._server: asyncio.Server | None = None

    async def start(self) -> asyncio.Server:
        self._server = await asyncio.start_server(self.handle, self.config.address, self.config.port,
                                                  reuse_address=True)
        return self._server

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(self, method: str, target: str) -> tuple[int, str, bytes, str]:
        """(code, content type, body, handler label) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n", "other"
        url = urllib.parse.urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query)
        if path == "/metrics":
            self.before_scrape()
            return 200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest(
                self.registry), "metrics"
        names: tuple[str, ...] | None = self.paths.get(path)
        if names is None and path.startswith(settings_.DEFAULT_URL + "/"):
            name = path[len(settings_.DEFAULT_URL) + 1:]
            names = (name,) if name in self.names else None
        if names is None:
            if path == "/":
                return 200, "text/html; charset=utf-8", self.index().encode(), "index"
            return 404, "text/plain; charset=utf-8", f"not found: {path}\n".encode(), "other"
        now = self.clock()
        health = verdict.judge(self.tracks(), names, now, self.started, self.config)
        if query.get("format", [""])[-1] == "json":
            body = json.dumps(verdict.to_json(health, now, time.time()), indent=2, sort_keys=True) + "\n"
            return health.code, "application/json", body.encode(), "health"
        return health.code, "text/plain; charset=utf-8", health.body.encode(), "health"

    def index(self) -> str:
        links = sorted({*self.paths, *(f"{settings_.DEFAULT_URL}/{name}" for name in self.names), "/metrics"})
        items = "".join(f'<li><a href="{p}">{p}</a> (<a href="{p}?format=json">json</a>)</li>'
                        if p != "/metrics" else f'<li><a href="{p}">{p}</a></li>' for p in links)
        return f"<html><head><title>healthz</title></head><body><ul>{items}</ul></body></html>\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self.reply(writer, 400, "text/plain", b"request too large\n", "other", True)
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            if len(head) > MAX_HEAD:
                await self.reply(writer, 400, "text/plain", b"request too large\n", "other", True)
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await self.reply(writer, 400, "text/plain", b"bad request\n", "other", True)
                return
            method, target, _ = parts
            try:
                code, ctype, body, handler = self.route(method, target)
            except Exception:  # noqa: BLE001 - one request never ends the server
                logger.exception("healthz: error answering %s %s", method, target)
                code, ctype, body, handler = 503, "text/plain", b"internal error\n", "other"
            await self.reply(writer, code, ctype, body, handler, method != "HEAD")
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def reply(self, writer: asyncio.StreamWriter, code: int, ctype: str, body: bytes,
                    handler: str, send_body: bool) -> None:
        self.requests.labels(handler, str(code)).inc()
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + (body if send_body else b""))
        await writer.drain()
