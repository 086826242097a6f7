"""Leader election among kube2sky replicas through an etcd lease (--leader-elect).

Rules:
1. The leader key (default /<prefix>-leader/kube2sky, outside the records prefix so reconciling
   never touches it) is created only if absent (compare create_revision == 0), attached to a
   lease of ttl seconds that the holder refreshes every ttl/3 seconds.
2. Only the holder writes, and every write is guarded by "the leader key holds my identity"
   (etcdwriter.Guard), so a replica that lost the lease without noticing cannot write.
3. Any etcd error, an expired lease or a key that is no longer ours means "not leader"; the
   replica keeps campaigning on the backoff schedule. On stop the holder deletes its key and
   revokes its lease, so a standby takes over at once.
4. on_change(is_leader) is called on every transition.
5. reachable is True while the last campaign or lease refresh got an answer from etcd (won or
   lost): a standby that is reachable can take over, which is what its readiness reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Callable

from kube2sky import etcdwriter

logger = logging.getLogger(__name__)


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(1 << 32):08x}"


class Election:
    def __init__(self, etcd: etcdwriter.Etcd, key: str, identity: str = "", ttl: int = 15,
                 on_change: Callable[[bool], None] | None = None, rng: random.Random | None = None) -> None:
        self.etcd = etcd
        self.key = key
        self.identity = identity or default_identity()
        self.ttl = max(2, int(ttl))
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.is_leader = False
        self.reachable = False
        self._lease_id: int | None = None

    @property
    def guard(self) -> etcdwriter.Guard:
        return etcdwriter.Guard(self.key, self.identity)

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            if leader:
                logger.info("became the leader (%s holds %s)", self.identity, self.key)
            else:
                logger.warning("not the leader any more (%s); stopped writing", self.identity)
            if self.on_change is not None:
                self.on_change(leader)

    async def _try_acquire(self) -> bool:
        async def grant(client):
            return await client.lease(self.ttl)

        lease = await self.etcd._call("lease grant", grant)
        self._lease_id = lease.id

        async def txn(client):
            t = client.transactions
            return await client.transaction(
                compare=[t.create(self.key.encode()) == 0],
                success=[t.put(self.key.encode(), self.identity.encode(), lease=lease.id)],
                failure=[t.get(self.key.encode())])

        ok, responses = await self.etcd._call("leader campaign", txn)
        if not ok:
            holder = ""
            if responses and responses[0]:
                holder = responses[0][0][0].decode(errors="replace")
            logger.info("standing by: %s is held by %s", self.key, holder or "another replica")
            await self._revoke()
        return bool(ok)

    async def _revoke(self) -> None:
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is None:
            return

        async def revoke(client):
            return await client.revoke_lease(lease_id)

        try:
            await self.etcd._call("lease revoke", revoke)
        except etcdwriter.EtcdError:
            pass

    async def _hold(self, stop: asyncio.Event) -> None:
        """Refresh the lease until it fails or stop is set."""
        lease_id = self._lease_id
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.ttl / 3)
                return
            except asyncio.TimeoutError:
                pass

            async def refresh(client):
                return await client.refresh_lease(lease_id)

            async def get(client):
                return await client.get(self.key.encode())

            reply = await self.etcd._call("lease refresh", refresh)
            if reply is None or reply.TTL <= 0:
                raise etcdwriter.EtcdError(f"lease of {self.key} expired")
            current = await self.etcd._call("leader check", get)
            if current is None or current.value.decode(errors="replace") != self.identity:
                raise etcdwriter.EtcdError(f"{self.key} is not ours any more")

    async def run(self, stop: asyncio.Event, backoff: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    won = await self._try_acquire()
                    self.reachable = True
                    if won:
                        attempt = 0
                        self._set(True)
                        await self._hold(stop)
                    else:
                        await _sleep(stop, self.ttl / 3 * (1 + self.rng.uniform(0, 0.2)))
                        continue
                except Exception as err:  # noqa: BLE001 - etcd trouble is transient: never end the process
                    self.reachable = False
                    self._set(False)
                    with contextlib.suppress(Exception):
                        await self._revoke()
                    attempt += 1
                    seconds = backoff[min(attempt, len(backoff)) - 1] * (1 + self.rng.uniform(-0.2, 0.2))
                    logger.warning("leader election: %s; retry #%d in %.1fs", err, attempt, seconds)
                    await _sleep(stop, seconds)
        finally:
            await self.resign()

    async def resign(self) -> None:
        if self.is_leader:
            async def delete(client):
                t = client.transactions
                return await client.transaction(
                    compare=[t.value(self.key.encode()) == self.identity.encode()],
                    success=[t.delete(self.key.encode())], failure=[])

            try:
                await self.etcd._call("leader resign", delete)
            except etcdwriter.EtcdError:
                pass
        self._set(False)
        await self._revoke()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except asyncio.TimeoutError:
        pass
