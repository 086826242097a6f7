"""kube2sky CLI: (argv, env) -> Settings, with app.run patched; bad flags exit 2 with one line."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys

import click.testing
import pytest

from kube2sky import app, cli
from kube2sky import settings as settings_mod

D = settings_mod.Settings()
DEFAULTS = dataclasses.replace(D, etcd_endpoints=("127.0.0.1:2379",))


def expect(**changes) -> settings_mod.Settings:
    return dataclasses.replace(DEFAULTS, **changes)


CASES = [
    pytest.param([], {}, expect(), id="defaults"),
    pytest.param(["--domain=cluster.local", "--etcd-server=http://127.0.0.1:4001"], {},
                 expect(etcd_endpoints=("127.0.0.1:4001",)), id="the old kube2sky args"),
    pytest.param(["-domain=corp.example.", "-etcd-server=http://10.0.0.1:4001"], {},
                 expect(domain="corp.example.", etcd_endpoints=("10.0.0.1:4001",)), id="single dash"),
    pytest.param(["--etcd_mutation_timeout=500ms", "--kube_master_url=http://127.0.0.1:8080",
                  "--kubecfg_file", "/etc/kube.conf"], {},
                 expect(etcd_mutation_timeout=0.5, kube_master_url="http://127.0.0.1:8080",
                        kubecfg_file="/etc/kube.conf"), id="underscore spellings"),
    pytest.param(["--etcd-mutation-timeout", "2m"], {}, expect(etcd_mutation_timeout=120.0), id="timeout minutes"),
    pytest.param(["--etcd-mutation-timeout=1m30s", "--resync-period=1h", "--ttl=1m", "--leader-ttl=15s"], {},
                 expect(etcd_mutation_timeout=90.0, resync_period=3600.0, ttl=60, leader_ttl=15),
                 id="Go durations"),
    pytest.param(["--etcd-mutation-timeout=2.5", "--ttl=45"], {}, expect(etcd_mutation_timeout=2.5, ttl=45),
                 id="plain seconds"),
    pytest.param(["-v=2", "--logtostderr", "--alsologtostderr"], {}, expect(), id="glog flags accepted"),
    pytest.param(["--resync-period", "0"], {}, expect(resync_period=0.0), id="no periodic resync"),
    pytest.param(["--etcd-server", "http://a:1,https://b:2, c"], {},
                 expect(etcd_endpoints=("a:1", "https://b:2", "c:2379")), id="etcd list, https is TLS"),
    pytest.param([], {"KUBE2SKY_DOMAIN": "Example.ORG", "KUBE2SKY_ETCD_SERVER": "http://e:2379",
                      "KUBE2SKY_HEALTHZ_PORT": "9999", "KUBE2SKY_TTL": "60"},
                 expect(domain="example.org.", etcd_endpoints=("e:2379",), healthz_port=9999, ttl=60),
                 id="environment"),
    pytest.param(["--pods", "verified", "--namespaces", "default,prod", "--dns-service", "kube-system/coredns",
                  "--no-legacy-names", "--endpoints-source", "endpoints"], {},
                 expect(pods=settings_mod.PodsMode.VERIFIED, namespaces=frozenset({"default", "prod"}),
                        dns_service="kube-system/coredns", legacy_names=False,
                        endpoint_source=settings_mod.EndpointSource.ENDPOINTS), id="records flags"),
    pytest.param(["--endpoint-source=endpointslices", "--dns-service="], {},
                 expect(endpoint_source=settings_mod.EndpointSource.ENDPOINTSLICES, dns_service=""),
                 id="alias and empty dns service"),
    pytest.param(["--leader-elect", "--leader-ttl", "5", "--dry-run", "--prefix", "/dns/", "--max-txn-ops", "64"], {},
                 expect(leader_elect=True, leader_ttl=5, dry_run=True, prefix="dns", max_txn_ops=64),
                 id="writer flags"),
    pytest.param(["--kube-master-url", "https://${KUBERNETES_SERVICE_HOST}:443", "--token-file", "/t",
                  "--ca-file", "/ca", "--insecure-skip-tls-verify"], {},
                 expect(kube_master_url="https://${KUBERNETES_SERVICE_HOST}:443", kube_token_file="/t",
                        kube_ca_file="/ca", kube_insecure=True), id="api flags"),
    pytest.param([], {"KUBE2SKY_LEGACY_NAMES": "false", "KUBE2SKY_LEADER_ELECT": "1"},
                 expect(legacy_names=False, leader_elect=True), id="boolean env"),
]


@pytest.mark.parametrize(("argv", "env", "want"), CASES)
def test_settings(monkeypatch, argv, env, want):
    got = []
    monkeypatch.setattr(app, "run", got.append)
    result = click.testing.CliRunner().invoke(cli.command, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert got == [want]


def test_manifests_dir(monkeypatch, tmp_path):
    got = []
    monkeypatch.setattr(app, "run", got.append)
    result = click.testing.CliRunner().invoke(cli.command, ["--manifests", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert got[0].manifests == str(tmp_path)


BAD = [
    pytest.param(["--bogus"], "No such option", id="unknown flag"),
    pytest.param(["-bogus=1"], "No such option '-bogus'", id="unknown single-dash flag named as given"),
    pytest.param(["-domian=x"], "Did you mean '--domain'?", id="a suggestion"),
    pytest.param(["--ttl=1.5s"], "--ttl", id="ttl is whole seconds"),
    pytest.param(["--leader-ttl=1s"], "--leader-ttl", id="leader ttl range"),
    pytest.param(["--domain", "a..b"], "--domain", id="bad domain"),
    pytest.param(["--etcd-server", "http://h:notaport"], "--etcd-server", id="bad etcd server"),
    pytest.param(["--etcd-mutation-timeout", "soon"], "--etcd-mutation-timeout", id="bad duration"),
    pytest.param(["--dns-service", "kube-dns"], "--dns-service", id="bad dns service"),
    pytest.param(["--pods", "insecure"], "--pods", id="insecure pods are skydns' business"),
    pytest.param(["--healthz-port", "70000"], "--healthz-port", id="bad port"),
    pytest.param(["--manifests", "/does/not/exist"], "--manifests", id="missing manifests"),
    pytest.param(["--namespaces", "Bad_Name"], "--namespaces", id="bad namespace"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_bad_flags_exit_2_with_one_line(monkeypatch, capsys, argv, needle):
    monkeypatch.setattr(app, "run", lambda s: pytest.fail("must not run"))
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kube2sky: error: ") and needle in err


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "kube2sky", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--domain", "--etcd-server", "--kube-master-url", "--kubecfg-file", "--healthz-port",
                 "--manifests", "--dry-run", "KUBE2SKY_ETCD_SERVER"):
        assert flag in out.stdout


# ---- etcd TLS files: checked at start-up, one line naming the flag and the file

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"


@pytest.fixture
def pem_files(tmp_path):
    files = {"ca.pem": CERT, "client.pem": CERT, "client.key": KEY, "junk.txt": "not pem\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return lambda name: str(tmp_path / name)


def _in(pem_files, arg: str) -> str:
    """A file name argument (alone or after "=") moved into the test's folder."""
    flag, sep, value = arg.rpartition("=")
    return flag + sep + pem_files(value) if value.endswith((".pem", ".key")) else arg


TLS_GOOD = [
    pytest.param(["--etcd-cafile", "ca.pem"], {}, ("ca.pem", "", ""), id="CA only"),
    pytest.param(["--etcd-cafile", "ca.pem", "--etcd-certfile", "client.pem", "--etcd-keyfile", "client.key"], {},
                 ("ca.pem", "client.pem", "client.key"), id="client certificate"),
    pytest.param(["--etcd_certfile=client.pem", "-etcd-keyfile=client.key"], {},
                 ("", "client.pem", "client.key"), id="old spellings, system roots"),
    pytest.param([], {"KUBE2SKY_ETCD_CAFILE": "ca.pem", "KUBE2SKY_ETCD_CERTFILE": "client.pem",
                      "KUBE2SKY_ETCD_KEYFILE": "client.key"}, ("ca.pem", "client.pem", "client.key"),
                 id="environment"),
]


@pytest.mark.parametrize(("argv", "env", "want"), TLS_GOOD)
def test_etcd_tls_flags(monkeypatch, pem_files, argv, env, want):
    got = []
    monkeypatch.setattr(app, "run", got.append)
    argv = [_in(pem_files, a) for a in argv]
    env = {k: pem_files(v) for k, v in env.items()}
    result = click.testing.CliRunner().invoke(cli.command, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    have = got[0]
    assert (have.etcd_cafile, have.etcd_certfile, have.etcd_keyfile) == tuple(pem_files(w) if w else "" for w in want)


TLS_BAD = [
    pytest.param(["--etcd-cafile", "missing.pem"], "--etcd-cafile: cannot read", "missing.pem", id="missing CA"),
    pytest.param(["--etcd-cafile", "junk.txt"], "--etcd-cafile", "junk.txt holds no PEM CERTIFICATE", id="CA not PEM"),
    pytest.param(["--etcd-certfile", "client.key", "--etcd-keyfile", "client.key"], "--etcd-certfile",
                 "client.key holds no PEM CERTIFICATE", id="key given as certificate"),
    pytest.param(["--etcd-certfile", "client.pem", "--etcd-keyfile", "client.pem"], "--etcd-keyfile",
                 "client.pem holds no PEM PRIVATE KEY", id="certificate given as key"),
    pytest.param(["--etcd-certfile", "client.pem"], "--etcd-keyfile", "together", id="certificate without key"),
    pytest.param(["--etcd-keyfile", "client.key"], "--etcd-certfile", "together", id="key without certificate"),
    pytest.param(["--etcd-cafile", "."], "--etcd-cafile: cannot read", "", id="a folder"),
]


@pytest.mark.parametrize(("argv", "flag", "needle"), TLS_BAD)
def test_bad_etcd_tls_files_exit_2_with_one_line(monkeypatch, capsys, pem_files, argv, flag, needle):
    monkeypatch.setattr(app, "run", lambda s: pytest.fail("must not run"))
    argv = [pem_files(a) if "." in a else a for a in argv]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kube2sky: error: {flag}") and needle in err


def test_version(capsys):
    import importlib.metadata

    with contextlib.suppress(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out == f"kube2sky, version {importlib.metadata.version('kube-skydns')}\n"


def test_check_api_unreachable_is_one_line(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    with pytest.raises(SystemExit) as info:
        cli.main([f"--kubecfg-file={kubeconfig}", "--check-api"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("kube2sky: error: cannot use the Kubernetes API: ") and "127.0.0.1:9" in err, err


def test_check_api_with_manifests(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([f"--manifests={tmp_path}", "--check-api"])
    assert info.value.code == 0, capsys.readouterr().err


def test_kubeconfig_insecure_skip_tls_verify_silences_urllib3_once(tmp_path, caplog):
    """insecure-skip-tls-verify in the kubeconfig (not only the flag): one log line, no per-request warning."""
    import warnings

    import urllib3

    from kube2sky import k8swatch

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9', insecure-skip-tls-verify: true}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    with warnings.catch_warnings():
        config = k8swatch.resolve(k8swatch.Connection(kubeconfig=str(kubeconfig)))
        assert config.verify is False and config.host == "https://127.0.0.1:9"
        assert config.authorization is not None and config.authorization() == "Bearer t"
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("unverified", urllib3.exceptions.InsecureRequestWarning)
        assert seen == []
    assert [r.message for r in caplog.records if "not verifying" in r.message] == [
        "not verifying the API server certificate (--insecure-skip-tls-verify)"]


@pytest.mark.integration
def test_healthz_port_0_logs_the_bound_port(tmp_path):
    import re as re_
    import urllib.request

    log = tmp_path / "kube2sky.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kube2sky", "--manifests", str(tmp_path), "--etcd-server",
                                 "http://127.0.0.1:9", "--healthz-host", "127.0.0.1", "--healthz-port", "0"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        from tests import procs

        line = procs.wait_until(lambda: re_.search(r"serving /readiness, /healthz and /metrics on 127\.0\.0\.1:(\d+)",
                                                   log.read_text()), timeout=30, what="the serving log line")
        port = int(line.group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.read() == b"ok\n"
    finally:
        proc.terminate()
        proc.wait(30)
