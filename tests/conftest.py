"""Shared fixtures: real etcd servers on loopback."""

from __future__ import annotations

import pytest

from tests import procs


@pytest.fixture
def etcd():
    """A fresh etcd for one test (stopped and removed afterwards)."""
    with procs.running_etcd() as server:
        yield server


@pytest.fixture(scope="session")
def shared_etcd():
    """One etcd for a whole session; tests must use their own key prefix."""
    with procs.running_etcd() as server:
        yield server
