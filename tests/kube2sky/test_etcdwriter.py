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


# ---- txn_request: the hand-encoded TxnRequest vs the generated protobuf classes (the plain path)

def _plain_txn(plan, compare):
    import aetcd.rpc as rpc

    request = rpc.TxnRequest()
    if compare is not None:
        request.compare.append(compare)
    for key, value in plan.puts:
        request.success.add().request_put.CopyFrom(rpc.PutRequest(key=key.encode(), value=value.encode()))
    for key in plan.deletes:
        request.success.add().request_delete_range.CopyFrom(rpc.DeleteRangeRequest(key=key.encode()))
    return request.SerializeToString()


def _random_text(rng, size, ascii_only=False):
    alphabet = "abcxyz0123/._-{}\":,\\\n" + ("\x7f" if ascii_only else "é€😀")
    return "".join(rng.choice(alphabet) for _ in range(size))


@pytest.mark.parametrize("seed", range(40))
def test_txn_request_equals_the_protobuf_encoding(seed):
    """Both encoders (ASCII plans formatted as text, others as bytes), with every size class of
    length; even seeds keep to ASCII, and every fourth seed to plans the text path takes."""
    import random

    import aetcd.rpc as rpc

    from kube2sky import reconcile

    rng = random.Random(seed)
    text = _random_text
    if seed % 2 == 0:
        def text(rng, size):
            return _random_text(rng, size, ascii_only=True)
    sizes = [0, 1, 2, 60, 127, 128, 129, 300, 8000, 12000, 16383, 16384, 20000, 200000]

    if seed % 4 == 0:  # every op on the text path: no empty value, no op of 16 KiB
        sizes = [1, 2, 60, 127, 128, 129, 300, 7900]

    def size():
        return rng.choice(sizes) if rng.random() < 0.3 else rng.randrange(1 if seed % 4 == 0 else 0, 200)

    plan = reconcile.Plan(
        tuple((text(rng, size() or 1), text(rng, size())) for _ in range(rng.randrange(0, 40))),
        tuple(text(rng, size() or 1) for _ in range(rng.randrange(0, 10))))
    compare = None
    if rng.random() < 0.5:
        compare = rpc.Compare(key=text(rng, size() or 1).encode(), value=text(rng, size()).encode(),
                              result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE)
    got = etcdwriter.txn_request(plan, compare.SerializeToString() if compare is not None else b"")
    assert got == _plain_txn(plan, compare)
    parsed = rpc.TxnRequest.FromString(got)
    assert [(op.request_put.key.decode(), op.request_put.value.decode()) for op in parsed.success
            if op.HasField("request_put")] == list(plan.puts)
    assert [op.request_delete_range.key.decode() for op in parsed.success
            if op.HasField("request_delete_range")] == list(plan.deletes)


@pytest.mark.parametrize("seed", range(10))
def test_nested_txn_request_equals_the_protobuf_encoding(seed):
    import random

    import aetcd.rpc as rpc

    from kube2sky import reconcile

    rng = random.Random(seed)
    plans = [reconcile.Plan(tuple((_random_text(rng, rng.randrange(1, 90)), _random_text(rng, rng.randrange(0, 300)))
                                  for _ in range(rng.randrange(0, 20))),
                            tuple(_random_text(rng, rng.randrange(1, 90)) for _ in range(rng.randrange(0, 5))))
             for _ in range(rng.randrange(1, 6))]
    compare = None
    if rng.random() < 0.5:
        compare = rpc.Compare(key=b"/skydns-leader/kube2sky", value=_random_text(rng, 20).encode(),
                              result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE)
    plain = rpc.TxnRequest()
    if compare is not None:
        plain.compare.append(compare)
    for plan in plans:
        plain.success.add().request_txn.CopyFrom(rpc.TxnRequest.FromString(_plain_txn(plan, None)))
    got = etcdwriter.nested_txn_request(plans, compare.SerializeToString() if compare is not None else b"")
    assert got == plain.SerializeToString()


@pytest.mark.parametrize(("max_ops", "want"), [
    pytest.param(128, (64, 64), id="etcd's default"),
    pytest.param(1024, (512, 512), id="raised"),
    pytest.param(9, (4, 5), id="odd"),
    pytest.param(7, (1, 7), id="too few to nest"),
    pytest.param(1, (1, 1), id="one"),
])
def test_nesting(max_ops, want):
    outer, inner = etcdwriter.nesting(max_ops)
    assert (outer, inner) == want
    assert outer == 1 or outer + inner <= max_ops  # etcd's rule: a child gets what its parent leaves
