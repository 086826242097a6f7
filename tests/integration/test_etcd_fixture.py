"""The etcd fixture itself: a real server that etcdctl can talk to."""

import pytest

pytestmark = pytest.mark.integration


def test_etcdctl_put_get(etcd):
    etcd.ctl("put", "/skydns/test/a", '{"host":"10.0.0.1"}')
    assert etcd.ctl("get", "--prefix", "/skydns/", "--print-value-only").strip() == '{"host":"10.0.0.1"}'
