"""app.main lifecycle in-process: serve, stop on the event with 0, port in use -> 1."""

from __future__ import annotations

import asyncio
import socket

from healthz import app
from healthz import settings as settings_
from tests.healthz import responder

K = "kubernetes.default.svc.cluster.local."


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_main_serves_probes_and_stops_cleanly() -> None:
    async def scenario(dns_port: int) -> tuple[int, bytes]:
        config = settings_.Settings(address="127.0.0.1", port=0, period=0.05, commands=(
            settings_.CommandProbe("cmd", "sleep 30", timeout=60.0),),  # still running at stop: killed
            probes=(settings_.parse_probe(f"k={K}@127.0.0.1:{dns_port}"),))
        stop = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        main = asyncio.create_task(app.main(config, stop=stop, ready=ready))
        port = await ready
        for _ in range(500):
            body = await get(port, "/healthz/k")
            if body.endswith(b"\r\n\r\nok"):
                break
            await asyncio.sleep(0.01)
        stop.set()
        return await asyncio.wait_for(main, 10), body

    with responder.Responder({(K, "A"): ["10.96.0.1"]}) as server:
        code, body = asyncio.run(scenario(server.port))
    assert code == 0
    assert body.startswith(b"HTTP/1.1 200 OK") and body.endswith(b"ok\n")


def test_port_in_use_exits_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        config = settings_.Settings(address="127.0.0.1", port=busy.getsockname()[1],
                                    commands=(settings_.CommandProbe("cmd", "true"),))
        assert asyncio.run(app.main(config)) == 1
