"""etcdwriter's pure parts: endpoints and the TLS hints of error lines (I/O is in the integration tests)."""

from __future__ import annotations

import pytest

from kube2sky import etcdwriter

E = etcdwriter.Endpoint


@pytest.mark.parametrize(("text", "want"), [
    pytest.param("http://127.0.0.1:4001", E("127.0.0.1", 4001), id="http"),
    pytest.param("https://etcd.kube-system:2379/", E("etcd.kube-system", 2379, True), id="https is TLS"),
    pytest.param("127.0.0.1:2379", E("127.0.0.1", 2379), id="bare"),
    pytest.param("etcd", E("etcd", 2379), id="default port"),
    pytest.param("https://[fd00::5]:2379", E("fd00::5", 2379, True), id="IPv6"),
    pytest.param("[fd00::5]", E("fd00::5", 2379), id="IPv6 default port"),
])
def test_parse_endpoint(text, want):
    assert etcdwriter.parse_endpoint(text) == want


@pytest.mark.parametrize(("endpoint", "text"), [
    pytest.param(E("10.0.0.5", 2379), "10.0.0.5:2379", id="v4"),
    pytest.param(E("fd00::5", 2379, True), "[fd00::5]:2379", id="v6"),
])
def test_endpoint_target(endpoint, text):
    assert str(endpoint) == text


@pytest.mark.parametrize(("error", "needle"), [
    pytest.param("Unwrap failed (TSI_DATA_CORRUPTED)", "--etcd-certfile and --etcd-keyfile", id="no client cert"),
    pytest.param("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED",
                 "--etcd-cafile", id="untrusted server"),
    pytest.param("Peer name 10.0.0.5 is not in peer certificate", "--etcd-server", id="name mismatch"),
    pytest.param("Socket closed with ssl error", "--etcd-server (https://)", id="other TLS failure"),
    pytest.param("failed to connect to all addresses; Connection refused", None, id="not TLS"),
])
def test_tls_hint(error, needle):
    hint = etcdwriter._tls_hint(error)
    if needle is None:
        assert hint == ""
    else:
        assert hint.startswith("; TLS: ") and needle in hint


def test_tls_files_are_off_when_empty():
    assert not etcdwriter.TLSFiles()
    assert etcdwriter.TLSFiles(ca="/ca.pem")
