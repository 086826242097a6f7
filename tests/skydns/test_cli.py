"""skydns CLI: (argv, env) -> Settings, with app.run patched; bad values exit 2 with one line."""

from __future__ import annotations

import contextlib
import os

import pytest

from skydns import app, cli, settings as settings_mod

Upstream = settings_mod.Upstream


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Call the CLI; returns the Settings app.run received (or the SystemExit code)."""
    for name in list(os.environ):
        if name.startswith(("SKYDNS_", "ETCD_")):
            monkeypatch.delenv(name)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n"
                      "nameserver not-an-ip\noptions ndots:5\n")
    monkeypatch.setattr(cli, "RESOLV_CONF", str(resolv))
    got = []
    monkeypatch.setattr(app, "run", got.append)

    def call(argv, env=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        cli.main(argv)
        assert len(got) == 1
        return got[0]

    return call


DEFAULTS = settings_mod.Settings()

CASES = [
    ("defaults", [], {}, dict(
        addr_host="127.0.0.1", addr_port=53, etcd_endpoints=("http://127.0.0.1:2379",), domains=("skydns.local.",),
        prefix="skydns", nameservers=(Upstream("10.96.0.10"), Upstream("fe80::1")), ns_rotate=True, no_rec=False,
        round_robin=True, http_host="0.0.0.0", http_port=9153, workers=1, ttl=300, negative_ttl=30,
        max_answers=1000, pods="disabled", lameduck=5.0, log_level="info", answer_cache_size=10000, udp_batch=64)),
    ("old kube-dns manifest",
     ["-machines=http://127.0.0.1:4001", "-addr=0.0.0.0:53", "-ns-rotate=false", "-domain=cluster.local."], {},
     dict(etcd_endpoints=("http://127.0.0.1:4001",), addr_host="0.0.0.0", addr_port=53, ns_rotate=False,
          domains=("cluster.local.",))),
    ("old spellings with a space", ["-addr", "0.0.0.0:5353", "-domain", "Cluster.Local", "-no-rec"], {},
     dict(addr_port=5353, domains=("cluster.local.",), no_rec=True)),
    ("double dash", ["--addr=[::1]:5353", "--domain", "a.example,B.example.", "--no-round-robin"], {},
     dict(addr_host="::1", addr_port=5353, domains=("a.example.", "b.example."), round_robin=False)),
    ("booleans with =true/=false", ["--round-robin=false", "-no-rec=true", "-ns-rotate=1"], {},
     dict(round_robin=False, no_rec=True, ns_rotate=True)),
    ("no-rec=false turns it back off", ["-no-rec=false"], {"SKYDNS_NO_REC": "true"}, dict(no_rec=False)),
    ("nameservers", ["-nameservers=8.8.8.8:53,1.1.1.1,[2001:db8::1]:5353"], {},
     dict(nameservers=(Upstream("8.8.8.8"), Upstream("1.1.1.1"), Upstream("2001:db8::1", 5353)))),
    ("no nameservers", ["-nameservers="], {}, dict(nameservers=())),
    ("path prefix slashes", ["-path-prefix=/dns/"], {}, dict(prefix="dns")),
    ("machines list", ["-machines", "127.0.0.1:2379, https://etcd-0:2379"], {},
     dict(etcd_endpoints=("127.0.0.1:2379", "https://etcd-0:2379"))),
    ("numbers", ["--ttl", "60", "--negative-ttl=5", "--max-answers=10", "--workers=4", "--lameduck=0.5",
                 "--edns-payload=4096"], {},
     dict(ttl=60, negative_ttl=5, max_answers=10, workers=4, lameduck=0.5, edns_payload=4096)),
    ("http addr and pods", ["--http-addr=127.0.0.1:0", "--pods=insecure"], {},
     dict(http_host="127.0.0.1", http_port=0, pods="insecure")),
    ("verbose", ["-verbose"], {}, dict(log_level="debug")),
    ("hostmaster mailbox", ["--hostmaster=Admin@Example.com"], {}, dict(hostmaster="admin.example.com.")),
    ("hidden cache size", ["--answer-cache-size=0"], {}, dict(answer_cache_size=0)),
    ("udp batches", ["--udp-batch=16"], {}, dict(udp_batch=16)),
    ("udp one per call", [], {"SKYDNS_UDP_BATCH": "0"}, dict(udp_batch=0)),
    ("obsolete SkyDNS flags are ignored", ["-rcache=0", "-systemd", "-rtimeout", "2s", "-addr=127.0.0.1:53"], {},
     dict(addr_host="127.0.0.1")),
    # env vars
    ("SkyDNS env vars", [], {"ETCD_MACHINES": "http://10.0.0.1:4001", "SKYDNS_ADDR": "0.0.0.0:53",
                             "SKYDNS_DOMAIN": "cluster.local", "SKYDNS_NAMESERVERS": "8.8.4.4:53",
                             "SKYDNS_PATH_PREFIX": "kube"},
     dict(etcd_endpoints=("http://10.0.0.1:4001",), addr_host="0.0.0.0", domains=("cluster.local.",),
          nameservers=(Upstream("8.8.4.4"),), prefix="kube")),
    ("our env vars", [], {"SKYDNS_MACHINES": "127.0.0.1:1", "SKYDNS_NS_ROTATE": "false", "SKYDNS_TTL": "7",
                          "SKYDNS_NEGATIVE_TTL": "8", "SKYDNS_MAX_ANSWERS": "9", "SKYDNS_PODS": "insecure",
                          "SKYDNS_HTTP_ADDR": "127.0.0.1:9999", "SKYDNS_WORKERS": "2", "SKYDNS_LAMEDUCK": "0",
                          "SKYDNS_ROUND_ROBIN": "false", "SKYDNS_LOG_LEVEL": "warning"},
     dict(etcd_endpoints=("127.0.0.1:1",), ns_rotate=False, ttl=7, negative_ttl=8, max_answers=9, pods="insecure",
          http_port=9999, workers=2, lameduck=0.0, round_robin=False, log_level="warning")),
    ("flag beats env", ["-domain=b.example."], {"SKYDNS_DOMAIN": "a.example."}, dict(domains=("b.example.",))),
    ("SKYDNS_MACHINES beats ETCD_MACHINES", [], {"SKYDNS_MACHINES": "127.0.0.1:1", "ETCD_MACHINES": "127.0.0.1:2"},
     dict(etcd_endpoints=("127.0.0.1:1",))),
]


@pytest.mark.parametrize(("argv", "env", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_settings(run, argv, env, expected):
    got = run(argv, env)
    for field, value in expected.items():
        assert getattr(got, field) == value, field


def test_tls_files(run, tmp_path):
    for name, kind in (("ca.pem", "CERTIFICATE"), ("cert.pem", "CERTIFICATE"), ("key.pem", "EC PRIVATE KEY")):
        (tmp_path / name).write_text(f"-----BEGIN {kind}-----\nAAAA\n-----END {kind}-----\n")
    got = run(["-ca-cert", str(tmp_path / "ca.pem")],
              {"ETCD_TLSPEM": str(tmp_path / "cert.pem"), "ETCD_TLSKEY": str(tmp_path / "key.pem")})
    assert (got.etcd_ca_cert, got.etcd_tls_pem, got.etcd_tls_key) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


BAD = [
    ("addr without port", ["-addr=0.0.0.0"], {}, "'--addr'"),
    ("addr bad port", ["-addr=0.0.0.0:99999"], {}, "'--addr'"),
    ("bad boolean", ["-ns-rotate=maybe"], {}, "'--ns-rotate'"),
    ("unknown flag named as given", ["-bogus=1"], {}, "No such option '-bogus'"),
    ("unknown flag with a suggestion", ["-nameserver=1.1.1.1"], {}, "Did you mean '--nameservers'?"),
    ("bad duration", ["--lameduck", "soon"], {}, "'--lameduck'"),
    ("ttl is whole seconds", ["--ttl=1.5s"], {}, "'--ttl'"),
    ("zero forward timeout", ["--forward-timeout=0s"], {}, "'--forward-timeout'"),
    ("nameserver not an IP", ["-nameservers=dns.google:53"], {}, "'--nameservers'"),
    ("nameserver bad port", ["-nameservers=8.8.8.8:x"], {}, "'--nameservers'"),
    ("empty domain", ["-domain=,"], {}, "'--domain'"),
    ("bad domain", ["-domain=a..b"], {}, "'--domain'"),
    ("root domain", ["-domain=."], {}, "'--domain'"),
    ("bad machines scheme", ["-machines=ftp://x:1"], {}, "'--machines'"),
    ("bad path prefix", ["-path-prefix=a/b"], {}, "'--path-prefix'"),
    ("workers 0", ["--workers=0"], {}, "'--workers'"),
    ("negative ttl", ["--ttl=-1"], {}, "'--ttl'"),
    ("bad pods", ["--pods=verified"], {}, "'--pods'"),
    ("missing ca file", ["-ca-cert=/nonexistent/ca.pem"], {}, "'--ca-cert'"),
    ("pem without key", [], {"SKYDNS_TLS_PEM": settings_mod.__file__}, "--tls-"),
    ("ca not PEM", ["-ca-cert", settings_mod.__file__], {}, "not a PEM file with a CERTIFICATE block"),
    ("bad env value", [], {"SKYDNS_TTL": "abc"}, "'--ttl'"),
    ("bad http addr", ["--http-addr=nowhere"], {}, "'--http-addr'"),
    ("udp batch too big", ["--udp-batch=5000"], {}, "'--udp-batch'"),
]


@pytest.mark.parametrize(("argv", "env", "needle"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_values_exit_2_with_one_line(run, capsys, argv, env, needle):
    with pytest.raises(SystemExit) as info:
        run(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("skydns: error: "), err
    assert needle in err


def test_obsolete_flag_warns(run, capsys):
    run(["-rcache=0"])
    assert "ignoring old SkyDNS flag -rcache" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help", "-help", "-h"])
def test_help_lists_env_vars(run, capsys, flag):
    try:
        cli.main([flag])
    except SystemExit as exc:
        assert exc.code in (0, None)
    out = capsys.readouterr().out
    for env in ("SKYDNS_ADDR", "ETCD_MACHINES", "SKYDNS_DOMAIN", "SKYDNS_NAMESERVERS", "SKYDNS_HTTP_ADDR"):
        assert env in out


def test_every_option_has_an_env_var():
    for param in cli.command.params:
        if param.name in ("version", "help"):
            continue
        assert param.envvar or cli.command.context_settings.get("auto_envvar_prefix"), param.name


PREPROCESS = [
    ("single dash with value", ["-addr=x:1"], ["--addr=x:1"]),
    ("single dash separate value", ["-addr", "x:1"], ["--addr", "x:1"]),
    ("bool flag", ["-no-rec"], ["--no-rec"]),
    ("bool false", ["-round-robin=false"], ["--no-round-robin"]),
    ("bool true double dash", ["--ns-rotate=TRUE"], ["--ns-rotate"]),
    ("unknown double dash kept for click", ["--zzz=1"], ["--zzz=1"]),
    ("positional kept", ["extra"], ["extra"]),
    ("after --", ["--", "-addr=1"], ["--", "-addr=1"]),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in PREPROCESS], ids=[c[0] for c in PREPROCESS])
def test_preprocess(argv, expected):
    assert cli.preprocess(argv)[0] == expected


def test_resolv_conf_unreadable(tmp_path):
    assert cli.resolv_conf_nameservers(str(tmp_path / "missing")) == ()


def test_doctor_subcommand_takes_the_same_spellings(monkeypatch):
    from skydns import doctor

    seen = []
    monkeypatch.setattr(doctor, "run", lambda settings, options: seen.append((settings, options)) or 0)
    monkeypatch.setattr(app, "run", lambda settings: pytest.fail("the server must not start"))
    with pytest.raises(SystemExit) as info:
        cli.main(["doctor", "-nameservers=8.8.8.8:53", "-addr", "127.0.0.1:1053", "--timeout=500ms"])
    assert info.value.code == 0
    settings, options = seen[0]
    assert settings.nameservers == (Upstream("8.8.8.8"),)
    assert (options.server, options.timeout) == (Upstream("127.0.0.1", 1053), 0.5)


def test_doctor_bad_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["doctor", "-bogus=1"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "skydns doctor: error: No such option '-bogus'.\n"


def test_help_lists_doctor(capsys):
    with contextlib.suppress(SystemExit):
        cli.main(["--help"])
    assert "skydns doctor" in capsys.readouterr().out


DURATIONS = [
    ("Go durations", ["--lameduck", "5s", "--forward-timeout=500ms", "--cache-serve-stale=1m30s",
                      "--loop-check-interval=1h"], {},
     dict(lameduck=5.0, forward_timeout=0.5, cache_serve_stale=90.0, loop_check_interval=3600.0)),
    ("plain seconds keep working", ["--lameduck=0.5", "--hosts-reload=2"], {}, dict(lameduck=0.5, hosts_reload=2.0)),
    ("TTLs as durations", ["--ttl=5m", "--negative-ttl=30s", "--cache-max-ttl=1h"], {},
     dict(ttl=300, negative_ttl=30, cache_max_ttl=3600)),
    ("env var duration", [], {"SKYDNS_LAMEDUCK": "250ms"}, dict(lameduck=0.25)),
]


@pytest.mark.parametrize(("argv", "env", "fields"), [c[1:] for c in DURATIONS], ids=[c[0] for c in DURATIONS])
def test_time_flags_take_durations(run, argv, env, fields):
    got = run(argv, env)
    assert {name: getattr(got, name) for name in fields} == fields


def test_every_time_flag_takes_a_duration():
    timed = [p.name for p in cli.command.params if "seconds" in (p.help or "")]
    assert len(timed) >= 8
    assert all(isinstance(p.type, cli.Duration) for p in cli.command.params if p.name in timed), timed


def test_version_is_the_package_version(run):
    import importlib.metadata

    assert run([]).version == "kube-skydns " + importlib.metadata.version("kube-skydns")


def test_tls_pem_needs_key(run, capsys, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(SystemExit) as info:
        run(["-tls-pem", str(cert)])
    assert info.value.code == 2
    assert capsys.readouterr().err == "skydns: error: Invalid value for '--tls-pem': give both --tls-pem and --tls-key, or neither\n"


def test_metrics_carry_the_version_and_no_created_series():
    import importlib.metadata

    from skydns import metrics

    metrics.build_info.labels(metrics.VERSION).set(1)
    body = metrics.render()[0].decode()
    assert f'skydns_build_info{{version="{importlib.metadata.version("kube-skydns")}"}} 1.0' in body
    assert "_created" not in body
