"""etcd I/O for kube2sky: read the prefix, commit plans as transactions.

Rules:
1. One Plan is one etcd transaction (the caller chunks plans below --max-txn-ops with
   reconcile.chunk). Puts and deletes of a transaction apply atomically, so a record never
   vanishes between a delete and an add.
2. With leader election every transaction carries a guard (compare: the leader key holds our
   identity); a failed guard raises NotLeader and nothing is written.
3. Every aetcd/gRPC failure becomes EtcdError; the client is closed and the next call
   reconnects, to the next endpoint of --etcd-server. Retrying is the caller's business (it
   keeps the desired state and re-reads etcd after a reconnect).
4. Reads are paged (keys in pages of page_size) so a big prefix never exceeds gRPC's message
   limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.utils

from kube2sky import reconcile

logger = logging.getLogger(__name__)


class EtcdError(Exception):
    """etcd could not be reached or refused an operation."""


class NotLeader(EtcdError):
    """The leader guard of a transaction failed: another replica holds the leader key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Guard:
    """Compare applied to every write: the key must hold value (the leader's identity)."""

    key: str
    value: str


def parse_endpoint(text: str) -> tuple[str, int]:
    """'http://host:port', 'host:port' or 'host' -> (host, port); 2379 by default."""
    text = text.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 2379
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 2379
    return host, int(port)


class Etcd:
    """An aetcd client over a list of endpoints, rotating on failure."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = 10.0, page_size: int = 2000,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.endpoints = tuple(parse_endpoint(e) for e in endpoints) or (("127.0.0.1", 2379),)
        self.timeout = timeout
        self.page_size = page_size
        self.on_error = on_error
        self._index = 0
        self._client: aetcd.Client | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"{host}:{port}"

    async def client(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self._index]
            client = aetcd.Client(host=host, port=port, timeout=self.timeout, options={
                "grpc.max_receive_message_length": 64 * 1024 * 1024,
                "grpc.max_send_message_length": 64 * 1024 * 1024,
            })
            try:
                await asyncio.wait_for(client.connect(), self.timeout)
            except Exception as err:  # noqa: BLE001
                await self._drop(client)
                raise self._error("connect", err) from err
            self._client = client
        return self._client

    async def _drop(self, client: aetcd.Client | None) -> None:
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 2)
            except Exception:  # noqa: BLE001 - closing a broken channel
                pass

    def _error(self, what: str, err: BaseException) -> EtcdError:
        if isinstance(err, EtcdError):
            return err
        if isinstance(err, aetcd.rpc.AioRpcError):
            text = f"{err.code().name}: {err.details()}"
        elif isinstance(err, asyncio.TimeoutError):
            text = f"no answer within {self.timeout:g}s"
        else:
            text = " ".join(str(err).split()) or type(err).__name__
        if self.on_error is not None:
            self.on_error(what)
        return EtcdError(f"etcd {self.endpoint} {what}: {text[:300]}")

    async def reset(self) -> None:
        """Close the client; the next call connects to the next endpoint."""
        client, self._client = self._client, None
        await self._drop(client)
        self._index = (self._index + 1) % len(self.endpoints)

    async def _call(self, what: str, coro_factory):
        client = await self.client()
        try:
            return await asyncio.wait_for(coro_factory(client), self.timeout + 1)
        except (aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError, asyncio.TimeoutError, OSError) as err:
            await self.reset()
            raise self._error(what, err) from err

    async def read_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        """Every key under prefix (e.g. "/skydns/") with its value as text, and the revision."""
        out: dict[str, str] = {}
        start = prefix.encode()
        end = aetcd.utils.prefix_range_end(start)
        revision = 0
        while True:
            req = aetcd.Client._build_get_range_request(key=start, range_end=end)
            req.limit = self.page_size
            if revision:
                req.revision = revision

            async def page(client, req=req):
                return await client.kvstub.Range(req, timeout=self.timeout, metadata=client.metadata)

            resp = await self._call("read", page)
            if not revision:
                revision = resp.header.revision
            for kv in resp.kvs:
                out[kv.key.decode("utf-8", "replace")] = kv.value.decode("utf-8", "replace")
            if not resp.more or not resp.kvs:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    async def commit(self, plan: reconcile.Plan, guard: Guard | None = None, lease: int | None = None) -> int:
        """Apply one plan in one transaction; return the new revision.

        Raises:
            NotLeader: the guard failed (nothing written).
            EtcdError: etcd unreachable or the transaction refused.
        """
        async def txn(client: aetcd.Client):
            ops = [client.transactions.put(k.encode(), v.encode()) for k, v in plan.puts]
            ops += [client.transactions.delete(k.encode()) for k in plan.deletes]
            compare = []
            if guard is not None:
                compare.append(client.transactions.value(guard.key.encode()) == guard.value.encode())
            kv = client.kvstub
            request = aetcd.rpc.TxnRequest(
                compare=[c.build_message() for c in compare],
                success=client._ops_to_requests(ops), failure=[])
            return await kv.Txn(request, timeout=self.timeout, metadata=client.metadata)

        resp = await self._call("transaction", txn)
        if not resp.succeeded:
            raise NotLeader(f"leader key {guard.key if guard else '?'} is not ours any more")
        return int(resp.header.revision)

    async def close(self) -> None:
        client, self._client = self._client, None
        await self._drop(client)


class DryRun:
    """Stands in for Etcd with --dry-run: holds what would be written and prints every change."""

    def __init__(self, out=None) -> None:
        self.data: dict[str, str] = {}
        self.out = out or sys.stdout
        self.revision = 0
        self.endpoint = "dry-run"
        self.quiet = False

    async def read_prefix(self, prefix: str) -> tuple[dict[str, str], int]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}, self.revision

    async def commit(self, plan: reconcile.Plan, guard: Guard | None = None, lease: int | None = None) -> int:
        for key, value in plan.puts:
            self.data[key] = value
            if not self.quiet:
                print(f"put {key} {value}", file=self.out, flush=True)
        for key in plan.deletes:
            self.data.pop(key, None)
            if not self.quiet:
                print(f"delete {key}", file=self.out, flush=True)
        self.revision += 1
        return self.revision

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass
