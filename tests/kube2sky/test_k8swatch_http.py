"""k8swatch's own HTTP transport: resolving the connection (flags, service account, kubeconfig),
the token file, NO_PROXY, the watch line splitter; then against the API double over https with a
token, and a kube2sky start path that never imports the kubernetes package."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube2sky import k8swatch
from tests import apiserver

# ---------------------------------------------------------------- the line splitter (pure)

LINES = [
    pytest.param([], [], id="nothing"),
    pytest.param([b""], [], id="an empty chunk"),
    pytest.param([b"a\n"], [b"a"], id="one line"),
    pytest.param([b"a\nb\n"], [b"a", b"b"], id="two lines in one chunk"),
    pytest.param([b"a", b"b", b"c\n"], [b"abc"], id="a line over three chunks"),
    pytest.param([b"a\nb", b"c\nd", b"\n"], [b"a", b"bc", b"d"], id="lines cut anywhere"),
    pytest.param([b"a\n", b"b"], [b"a", b"b"], id="a last line without newline"),
    pytest.param([b"a\n\nb\n"], [b"a", b"", b"b"], id="an empty line is a line"),
    pytest.param([b"\n"], [b""], id="only a newline"),
    pytest.param([b"a", b"", b"\n", b""], [b"a"], id="empty chunks between"),
    pytest.param([b'{"type":"ADDED"}\r\n'], [b'{"type":"ADDED"}\r'], id="CR stays (JSON ignores it)"),
    pytest.param([b"\xc3", b"\xa9\n"], [b"\xc3\xa9"], id="a UTF-8 character cut in two"),
]


@pytest.mark.parametrize(("chunks", "lines"), LINES)
def test_iter_lines(chunks, lines):
    assert list(k8swatch.iter_lines(iter(chunks))) == lines


def split_lines(data: bytes) -> list[bytes]:
    """What iter_lines must give for data, however it is cut: the lines, the last one without
    its newline, no phantom line after a final newline."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from([b"\n", b"{}", b"ab", b"\r\n", b"x" * 40]),
                                               max_size=30).map(b"".join),
       cuts=st.lists(st.integers(0, 300), max_size=15))
def test_any_chunking_gives_the_same_lines(data, cuts):
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    assert b"".join(chunks) == data
    assert list(k8swatch.iter_lines(chunks)) == split_lines(data)


# ---------------------------------------------------------------- NO_PROXY (pure)

@pytest.mark.parametrize(("url", "rules", "bypass"), [
    pytest.param("https://10.96.0.1:443", "", False, id="no rules"),
    pytest.param("https://10.96.0.1:443", "*", True, id="star"),
    pytest.param("https://10.96.0.1:443", "10.96.0.0/12", True, id="CIDR"),
    pytest.param("https://10.97.0.1:443", "10.96.0.0/16", False, id="outside the CIDR"),
    pytest.param("https://10.96.0.1:443", "10.96.0.1", True, id="the address"),
    pytest.param("https://api.example.com", "example.com", True, id="domain suffix"),
    pytest.param("https://api.example.com", ".example.com", True, id="domain suffix with a dot"),
    pytest.param("https://badexample.com", "example.com", False, id="not a suffix of a label"),
    pytest.param("https://api.example.com:6443", "api.example.com:6443", True, id="host:port"),
    pytest.param("https://api.example.com:6443", "api.example.com:443", False, id="another port"),
    pytest.param("https://[fd00::1]:443", "fd00::/8", True, id="IPv6 CIDR"),
    pytest.param("https://API.Example.com", " foo , example.COM ", True, id="case and spaces"),
])
def test_no_proxy(url, rules, bypass):
    assert k8swatch._no_proxy(url, rules) is bypass


# ---------------------------------------------------------------- the token file

class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_file_is_reread_at_most_every_60s_and_a_bad_read_keeps_the_token(tmp_path, caplog):
    path = tmp_path / "token"
    path.write_text("one\n")
    clock = Clock()
    token = k8swatch.TokenFile(str(path), clock=clock)
    assert token() == "Bearer one"
    path.write_text("two")
    clock.now += 59
    assert token() == "Bearer one"
    clock.now += 1
    assert token() == "Bearer two"
    path.unlink()
    clock.now += 60
    assert token() == "Bearer two"
    assert "cannot read the token file" in caplog.text and "keeping the previous token" in caplog.text
    path.write_text("")  # an empty file (a rotation half done) keeps the token too
    clock.now += 60
    assert token() == "Bearer two"


def test_token_file_missing_from_the_start_is_none(tmp_path):
    assert k8swatch.TokenFile(str(tmp_path / "nope"))() is None


# ---------------------------------------------------------------- resolve: flags and service account

def sa_dir(folder, token: str | None = "sa-token", ca: str | None = "CA PEM") -> str:
    folder.mkdir(exist_ok=True)
    if token is not None:
        (folder / "token").write_text(token)
    if ca is not None:
        (folder / "ca.crt").write_text(ca)
    return str(folder)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG", "HTTPS_PROXY", "https_proxy",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("env", "files", "want"), [
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {},
                 ("https://10.96.0.1:443", "ca.crt", "Bearer sa-token"), id="in-cluster"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, {},
                 ("https://[fd00::1]:6443", "ca.crt", "Bearer sa-token"), id="in-cluster IPv6 in brackets"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, {},
                 "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set", id="no port"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {"token": ""},
                 "cannot read the service account token", id="empty token"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {"ca": None},
                 "cannot read the service account CA", id="no CA"),
    pytest.param({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, {"token": None},
                 "no API to talk to", id="no token: not in a pod"),
    pytest.param({}, {}, "no API to talk to", id="nothing"),
])
def test_resolve_in_cluster(clean_env, tmp_path, env, files, want):
    for name, value in env.items():
        clean_env.setenv(name, value)
    folder = sa_dir(tmp_path / "sa", **files)
    conn = k8swatch.Connection(service_account_dir=folder)
    if isinstance(want, str):
        with pytest.raises(k8swatch.ConfigError, match=want):
            k8swatch.resolve(conn)
        return
    config = k8swatch.resolve(conn)
    assert (config.host, os.path.basename(config.ca_file), config.authorization()) == want
    assert config.verify and config.proxy == ""


@pytest.mark.parametrize(("conn", "env", "want"), [
    pytest.param(dict(master_url="http://127.0.0.1:8080/"), {}, ("http://127.0.0.1:8080", "", None),
                 id="plain URL, trailing slash dropped"),
    pytest.param(dict(master_url="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}"),
                 {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                 ("https://10.0.0.1:443", "ca.crt", "Bearer sa-token"), id="variables; https takes the SA token"),
    pytest.param(dict(master_url="https://10.0.0.1", token_file="own", ca_file="/own/ca"), {},
                 ("https://10.0.0.1", "/own/ca", "Bearer own-token"), id="own token and CA"),
    pytest.param(dict(master_url="https://10.0.0.1", token_file="missing"), {},
                 "cannot read the token file", id="missing token file"),
    pytest.param(dict(master_url="https://10.0.0.1", insecure=True), {},
                 ("https://10.0.0.1", "ca.crt", "Bearer sa-token"), id="insecure"),
])
def test_resolve_master_url(clean_env, tmp_path, conn, env, want):
    for name, value in env.items():
        clean_env.setenv(name, value)
    (tmp_path / "own").write_text("own-token\n")
    if conn.get("token_file"):
        conn["token_file"] = str(tmp_path / conn["token_file"])
    config_conn = k8swatch.Connection(service_account_dir=sa_dir(tmp_path / "sa"), **conn)
    if isinstance(want, str):
        with pytest.raises(k8swatch.ConfigError, match=want):
            k8swatch.resolve(config_conn)
        return
    config = k8swatch.resolve(config_conn)
    ca = os.path.basename(config.ca_file) if config.ca_file.startswith(str(tmp_path)) else config.ca_file
    auth = config.authorization() if config.authorization else None
    assert (config.host, ca, auth) == want
    assert config.verify is not conn.get("insecure", False)


def test_resolve_takes_the_proxy_from_the_environment_unless_no_proxy(clean_env, tmp_path):
    clean_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    conn = k8swatch.Connection(master_url="https://10.96.0.1:443", service_account_dir=str(tmp_path))
    assert k8swatch.resolve(conn).proxy == "http://proxy.example:3128"
    clean_env.setenv("NO_PROXY", "10.96.0.0/12")
    assert k8swatch.resolve(conn).proxy == ""


def test_resolve_kubeconfig_keeps_cert_server_name_and_proxy(clean_env, tmp_path):
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "c.pem").write_text("CERT")
    (tmp_path / "c.key").write_text("KEY")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://10.1.2.3:6443/', certificate-authority: ca.pem, "
        "tls-server-name: api.internal, proxy-url: 'http://proxy.example:3128'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {client-certificate: c.pem, client-key: c.key, username: admin, password: pw}}]\n")
    config = k8swatch.resolve(k8swatch.Connection(kubeconfig=str(kubeconfig)))
    assert config.host == "https://10.1.2.3:6443" and config.verify
    assert (config.ca_file, config.cert_file, config.key_file) == tuple(
        str(tmp_path / n) for n in ("ca.pem", "c.pem", "c.key"))
    assert config.tls_server_name == "api.internal" and config.proxy == "http://proxy.example:3128"
    assert config.authorization() == "Basic YWRtaW46cHc="  # admin:pw


# ---------------------------------------------------------------- against the API double

def service(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A one-day CA-less self-signed certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("pki")
    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=kubernetes",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.mark.integration
def test_in_cluster_lists_over_https_with_the_token_and_follows_its_rotation(clean_env, tmp_path, pki):
    with apiserver.ApiServer(tls=pki) as api:
        api.token = "first"
        api.create(service("web", "10.0.0.20"))
        folder = sa_dir(tmp_path / "sa", token="first\n", ca=open(pki[0]).read())
        clean_env.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        clean_env.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        config = k8swatch.resolve(k8swatch.Connection(service_account_dir=folder))
        assert config.host == f"https://127.0.0.1:{api.port}"
        clock = Clock(time.monotonic())
        config.authorization.clock = clock
        transport = k8swatch.ApiTransport(config)
        items, rv = transport.list(k8swatch.SERVICES)
        assert [i["metadata"]["name"] for i in items] == ["web"] and rv
        assert transport.served(k8swatch.ENDPOINT_SLICES)

        # the kubelet rotates the token; the server wants the new one at once
        (tmp_path / "sa" / "token").write_text("second\n")
        api.token = "second"
        clock.now += 30  # not yet re-read: the old token is refused
        with pytest.raises(k8swatch.ApiError, match="401"):
            transport.list(k8swatch.SERVICES)
        clock.now += 31
        items, _ = transport.list(k8swatch.SERVICES)
        assert [i["metadata"]["name"] for i in items] == ["web"]


@pytest.mark.integration
def test_watch_streams_events_and_stop_unblocks_it(tmp_path):
    with apiserver.ApiServer(bookmark_interval=60) as api:
        transport = k8swatch.ApiTransport(k8swatch.ApiConfig(api.url), watch_timeout=60)
        _, rv = transport.list(k8swatch.SERVICES)
        got: list[dict] = []
        ended = threading.Event()

        def run() -> None:
            try:
                got.extend(transport.watch(k8swatch.SERVICES, rv))
            finally:
                ended.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        api.create(service("web", "10.0.0.20"))
        deadline = time.monotonic() + 10 * float(os.environ.get("KUBE_SKYDNS_TEST_TIMEOUT_SCALE", "3"))
        while not api.watch_count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the event is on its way; the watch then blocks in a read
        transport.stop()
        assert ended.wait(10), "stop() did not unblock the pending read"
        assert [(e["type"], e["object"]["metadata"]["name"], e["object"]["kind"]) for e in got] == [
            ("ADDED", "web", "Service")]


def serve_once(response: bytes, pieces: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection HTTP server on 127.0.0.1: reads the request, sends response then each
    piece as its own write (a pause between), then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            conn.sendall(response)
            for piece in pieces:
                time.sleep(0.01)
                conn.sendall(piece)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def chunked(*pieces: bytes) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


EVENT_A = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "2"}}}).encode()
EVENT_B = json.dumps({"type": "DELETED", "object": {"metadata": {"name": "b", "resourceVersion": "3"}}}).encode()
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"


@pytest.mark.integration
@pytest.mark.parametrize(("head", "pieces"), [
    pytest.param(CHUNKED, chunked(EVENT_A[:10], EVENT_A[10:] + b"\n" + EVENT_B[:5], EVENT_B[5:] + b"\n"),
                 id="chunked, lines cut across chunks"),
    pytest.param(CHUNKED, chunked(EVENT_A + b"\n\n", EVENT_B), id="chunked, an empty line, no final newline"),
    pytest.param(UNTIL_CLOSE, [EVENT_A[:7], EVENT_A[7:] + b"\n", EVENT_B], id="read until close"),
])
def test_watch_reassembles_lines_from_the_wire(head, pieces):
    port, thread = serve_once(head, pieces)
    transport = k8swatch.ApiTransport(k8swatch.ApiConfig(f"http://127.0.0.1:{port}"))
    events = list(transport.watch(k8swatch.SERVICES, "1"))
    thread.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"], e["object"]["kind"]) for e in events] == [
        ("ADDED", "a", "Service"), ("DELETED", "b", "Service")]


@pytest.mark.integration
@pytest.mark.parametrize(("status", "body", "error", "needle"), [
    pytest.param(410, {"kind": "Status", "reason": "Expired", "message": "too old"}, k8swatch.Expired,
                 "410 Expired: too old", id="410"),
    pytest.param(404, {"kind": "Status", "reason": "NotFound", "message": "nope"}, k8swatch.NotServed, "404",
                 id="404"),
    pytest.param(403, {"kind": "Status", "reason": "Forbidden", "message": "no"}, k8swatch.ApiError,
                 "check the token / RBAC", id="403"),
    pytest.param(500, None, k8swatch.ApiError, "500", id="500 without a Status"),
])
def test_http_errors_map_to_watch_errors(status, body, error, needle):
    data = json.dumps(body).encode() if body is not None else b"oops"
    head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status, len(data))
    port, thread = serve_once(head + data, [])
    transport = k8swatch.ApiTransport(k8swatch.ApiConfig(f"http://127.0.0.1:{port}"))
    with pytest.raises(error, match=needle):
        transport.list(k8swatch.SERVICES)
    thread.join(10)


@pytest.mark.integration
def test_nothing_listening_is_an_api_error_naming_the_host():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = k8swatch.ApiTransport(k8swatch.ApiConfig(f"http://127.0.0.1:{port}"), connect_timeout=2)
    with pytest.raises(k8swatch.ApiError, match=f"http://127.0.0.1:{port}: "):
        transport.list(k8swatch.SERVICES)


@pytest.mark.integration
def test_master_url_start_path_never_imports_kubernetes():
    """kube2sky's CLI and make_source with --kube-master-url, a list, a discovery and a watch:
    the kubernetes package is never imported (it costs ~0.6 s of CPU at start)."""
    script = (
        "import sys, threading\n"
        "from kube2sky import app, cli, k8swatch, settings\n"
        "source = app.make_source(settings.Settings(kube_master_url=sys.argv[1]))\n"
        "items, rv = source.list(k8swatch.SERVICES)\n"
        "assert source.served(k8swatch.ENDPOINT_SLICES)\n"
        "threading.Timer(0.5, source.stop).start()\n"
        "for event in source.watch(k8swatch.SERVICES, rv):\n"
        "    pass\n"
        "print(len(items), sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))\n")
    with apiserver.ApiServer() as api:
        api.create(service("web", "10.0.0.20"))
        out = subprocess.run([sys.executable, "-c", script, api.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1 []\n"
