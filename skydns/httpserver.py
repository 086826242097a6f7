"""The HTTP side of skydns: /metrics, /health and /ready on --http-addr (default 0.0.0.0:9153).

Rules:
1. Plain asyncio streams, HTTP/1.1 with ``Connection: close``: one request per connection, no
   dependency. Only GET and HEAD; anything else is 405, unknown paths 404.
2. /health is 200 "OK\n" while the process runs (liveness). /ready asks the ``ready`` callable,
   which returns "" when ready ("OK\n") or the reason it is not ("etcd: not loaded yet",
   "shutting down"); the reason plus a newline is the 503 body.
3. A request must arrive within a few seconds and its head stay small, so a slow or hostile
   client costs one task for a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from skydns import metrics

logger = logging.getLogger(__name__)

# Time allowed for a client to send its request head, seconds.
REQUEST_TIMEOUT = 5.0
# Largest request head accepted, bytes.
MAX_HEAD = 8192

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ListenError(Exception):
    """The HTTP listen address cannot be bound."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; ListenError with a one-line reason."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {shown}/http: {reason} (use --http-addr to pick another)") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves /metrics, /health and /ready on an already bound socket."""

    def __init__(self, sock: socket.socket, ready: Callable[[], str]) -> None:
        self.sock = sock
        self.ready = ready
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self.sock)
        host, port = self.address
        logger.info("serving /metrics, /health, /ready on http://%s:%s", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/metrics":
            body, content_type = metrics.render()
            return 200, content_type, body
        if path in ("/health", "/healthz"):
            return 200, "text/plain; charset=utf-8", b"OK\n"
        if path in ("/ready", "/readyz"):
            reason = self.ready()
            if reason:
                return 503, "text/plain; charset=utf-8", reason.encode() + b"\n"
            return 200, "text/plain; charset=utf-8", b"OK\n"
        return 404, "text/plain; charset=utf-8", b"not found; try /metrics, /health or /ready\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                    asyncio.TimeoutError, ConnectionError):
                return
            if len(head) > MAX_HEAD:
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3:
                status, content_type, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, content_type, body = self.route(method, parts[1])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except Exception as exc:  # noqa: BLE001 - one bad client never stops the server
            logger.debug("HTTP request failed: %s", exc)
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass
