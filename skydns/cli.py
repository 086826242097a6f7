"""The ``skydns`` command: flags and env vars -> Settings -> app.run.

Rules:
1. The CLI only parses, validates and builds Settings, then calls ``app.run(settings)``.
2. Every option has an env var: SKYDNS_<PARAMETER NAME> (auto_envvar_prefix), plus the old
   SkyDNS names ETCD_MACHINES, ETCD_CACERT, ETCD_TLSPEM, ETCD_TLSKEY. A flag beats its env var.
3. Old single-dash SkyDNS spellings work: ``-addr=0.0.0.0:53``, ``-addr 0.0.0.0:53``,
   ``-no-rec``, ``-ns-rotate=false``. ``preprocess`` rewrites them to ``--name`` before click
   sees them; booleans take ``=true``/``=false`` (also with two dashes). Flags of old SkyDNS
   that mean nothing here (-rcache, -systemd, ...) are accepted with a warning, so old
   manifests still start.
4. A bad value exits at once with code 2 and one line: "skydns: error: Invalid value for '--addr': ...";
   an unknown flag is named as given ("No such option: -bogus"), with the closest known flag.
5. Adding an option: append a ``click.option`` to ``command``. When its parameter name is a
   Settings field and the value needs no conversion, it is passed through as is; otherwise add
   a converter to ``_CONVERT`` (param name -> function returning Settings fields).
6. Time flags (every option whose help says "seconds") take a Go/CoreDNS duration (5s, 500ms,
   1m30s) or plain seconds: ``Duration`` wraps the option's own range type.
7. ``skydns doctor ...`` runs skydns/doctor.py's command with the same spellings, env vars and
   error style; ``skydns --help`` lists it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
import dns.name

from skydns import app, etcdwatch, metrics, settings as settings_mod
from skydns import forwarding  # FORWARD helper: forwarding/cache/loop/hosts options

RESOLV_CONF = "/etc/resolv.conf"
_DEFAULTS = settings_mod.Settings()
_TRUE = ("true", "t", "1", "yes", "y", "on")
_FALSE = ("false", "f", "0", "no", "n", "off")
# Old SkyDNS flags with no meaning here; accepted (with their value, if any) and ignored.
OBSOLETE_FLAGS = (
    "rcache", "rcache-ttl", "scache", "discover", "systemd", "subdomains", "local", "dnssec",
    "metrics-path", "metrics-port", "rtimeout", "ndots", "stub-zones", "priority",
)



# -- value parsing (each raises click.BadParameter with the fix in one line) --------------------


class Duration(click.ParamType):
    """A time flag: a Go duration (5s, 500ms, 1m30s) or plain seconds, then the flag's own range.

    Wraps the option's FloatRange/IntRange; an IntRange flag (TTLs) takes whole seconds only.
    """

    name = "duration"

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = settings_mod.parse_duration(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if isinstance(self.inner, click.IntRange):
            if seconds != int(seconds):
                self.fail(f"{value!r}: give whole seconds (e.g. 30s, 5m)", param, ctx)
            return self.inner.convert(int(seconds), param, ctx)
        return self.inner.convert(seconds, param, ctx)


def use_durations(command_: click.Command) -> click.Command:
    """Give every time option of command_ (help mentions seconds) the Duration type."""
    for param in command_.params:
        if (isinstance(param, click.Option) and "seconds" in (param.help or "")
                and isinstance(param.type, (click.FloatRange, click.IntRange, click.types.FloatParamType))
                and not isinstance(param.type, Duration)):
            param.type = Duration(param.type)
    return command_



def parse_hostport(text: str, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port optional when default_port is given)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, tail = text[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise click.BadParameter(f"{text!r} is not [IPv6]:port")
        port_text = tail[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1 and default_port is not None:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise click.BadParameter(f"{text!r} has no port; use host:port, e.g. 127.0.0.1:53")
        port = default_port
    elif not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{text!r}: port must be a number 0-65535")
    else:
        port = int(port_text)
    return host, port


def parse_domains(text: str) -> tuple[str, ...]:
    """Comma list of zones -> lower-case FQDNs."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            name = dns.name.from_text(item)
        except Exception as exc:  # noqa: BLE001 - dnspython raises several kinds
            raise click.BadParameter(f"{item!r} is not a domain name ({exc})") from None
        if name == dns.name.root:
            raise click.BadParameter("the root zone '.' cannot be served; give a domain such as cluster.local.")
        out.append(name.to_text())
    if not out:
        raise click.BadParameter("give at least one domain, e.g. cluster.local.")
    return tuple(dict.fromkeys(out))


def parse_upstreams(text: str) -> tuple[settings_mod.Upstream, ...]:
    """Comma list of ip[:port] / [v6]:port -> Upstreams (port 53 by default)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, port = parse_hostport(item, default_port=53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise click.BadParameter(f"{item!r}: nameservers must be IP addresses (ip:port)") from None
        if port == 0:
            raise click.BadParameter(f"{item!r}: port 0 is not a nameserver port")
        out.append(settings_mod.Upstream(host, port))
    return tuple(out)


def resolv_conf_nameservers(path: str | None = None) -> tuple[settings_mod.Upstream, ...]:
    """The nameserver lines of resolv.conf (port 53); () when unreadable."""
    found = []
    try:
        with open(path or RESOLV_CONF, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    host = parts[1].split("%", 1)[0]
                    try:
                        ipaddress.ip_address(host)
                    except ValueError:
                        continue
                    found.append(settings_mod.Upstream(host, 53))
    except OSError:
        return ()
    return tuple(found)


def parse_machines(text: str) -> tuple[str, ...]:
    """Comma list of etcd endpoints (http://, https:// or host:port), validated."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            etcdwatch.parse_endpoint(item)
        except etcdwatch.ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
        out.append(item)
    if not out:
        raise click.BadParameter("give at least one etcd endpoint, e.g. http://127.0.0.1:2379")
    return tuple(out)


def _addr(value: str, params: dict) -> dict:
    host, port = parse_hostport(value)
    return {"addr_host": host, "addr_port": port}


def _http_addr(value: str, params: dict) -> dict:
    host, port = parse_hostport(value)
    return {"http_host": host, "http_port": port}


def _prefix(value: str, params: dict) -> dict:
    prefix = value.strip().strip("/")
    if not prefix or "/" in prefix:
        raise click.BadParameter(f"{value!r}: give one path segment, e.g. skydns", param_hint="'--path-prefix'")
    return {"prefix": prefix}


def _nameservers(value: str | None, params: dict) -> dict:
    if value is None:
        return {"nameservers": resolv_conf_nameservers()}
    return {"nameservers": parse_upstreams(value)}


def _verbose(value: bool, params: dict) -> dict:
    return {"log_level": "debug"} if value else {}


def _hostmaster(value: str, params: dict) -> dict:
    if not value:
        return {"hostmaster": ""}
    name = value.strip().lower().replace("@", ".")
    return {"hostmaster": name if name.endswith(".") else name + "."}


def _pem(path: str | None, kind: str) -> str:
    """path if it is a readable PEM file holding a ``kind`` block; "" for none."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            text = fh.read(1 << 20)
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}") from None
    if b"-----BEGIN " not in text or kind.encode() not in text:
        raise click.BadParameter(f"{path} is not a PEM file with a {kind} block")
    return path


def _wrap(parse: Callable[[str], Any], field: str, hint: str) -> Callable[[Any, dict], dict]:
    def convert(value: Any, params: dict) -> dict:
        try:
            return {field: parse(value)}
        except click.BadParameter as exc:
            exc.param_hint = hint
            raise
    return convert


# param name -> converter(value, all params) -> Settings fields. Params not listed here whose
# name is a Settings field are passed through unchanged.
_CONVERT: dict[str, Callable[[Any, dict], dict]] = {
    "addr": _addr,
    "http_addr": _http_addr,
    "machines": _wrap(parse_machines, "etcd_endpoints", "'--machines'"),
    "domain": _wrap(parse_domains, "domains", "'--domain'"),
    "path_prefix": _prefix,
    "nameservers": _nameservers,
    "ca_cert": lambda v, p: {"etcd_ca_cert": _pem(v, "CERTIFICATE")},
    "tls_pem": lambda v, p: {"etcd_tls_pem": _pem(v, "CERTIFICATE")},
    "tls_key": lambda v, p: {"etcd_tls_key": _pem(v, "PRIVATE KEY")},
    "verbose": _verbose,
    "hostmaster": _hostmaster,
}


def build_settings(params: dict[str, Any]) -> settings_mod.Settings:
    """Settings from the command's parameters (raises click.BadParameter)."""
    fields = {f.name for f in dataclasses.fields(settings_mod.Settings)}
    values: dict[str, Any] = {}
    for name, value in params.items():
        if name in _CONVERT:
            continue
        if name in fields:
            values[name] = value
    for name, convert in _CONVERT.items():
        if name in params:
            try:
                values.update(convert(params[name], params))
            except click.BadParameter as exc:
                if exc.param_hint is None:
                    exc.param_hint = "'--" + name.replace("_", "-") + "'"
                raise
    if params.get("tls_pem") and not params.get("tls_key") or params.get("tls_key") and not params.get("tls_pem"):
        raise click.BadParameter("give both --tls-pem and --tls-key, or neither", param_hint="'--tls-pem'")
    values.update(forwarding.settings_from_click(dict(params)))  # FORWARD helper
    values["version"] = f"kube-skydns {metrics.VERSION}"  # CHAOS version.bind
    return settings_mod.Settings(**values)


# -- argv: old single-dash spellings -----------------------------------------------------------


def preprocess(argv: Sequence[str], command_: click.Command | None = None) -> tuple[list[str], list[str]]:
    """Rewrite old SkyDNS spellings to click's; returns (args, warnings)."""
    command_ = command_ or command
    longs: set[str] = set()
    booleans: dict[str, tuple[str, str]] = {}  # name -> (on flag, off flag)
    for param in command_.params:
        if not isinstance(param, click.Option):
            continue
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                longs.add(opt[2:])
        if param.is_flag and param.secondary_opts:
            on, off = param.opts[-1], param.secondary_opts[-1]
            booleans[on[2:]] = (on, off)
            booleans[off[2:]] = (off, on)
        elif param.is_flag:
            booleans[param.opts[-1][2:]] = (param.opts[-1], "")
    out: list[str] = []
    warnings: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out.extend(args[i - 1:])
            break
        if arg == "-h":
            out.append("--help")
            continue
        if not arg.startswith("-") or arg == "-" or (len(arg) == 2 and arg[1] != "-"):
            out.append(arg)
            continue
        body = arg.lstrip("-")
        name, eq, value = body.partition("=")
        if name in ("h", "help"):
            out.append("--help")
            continue
        if name in OBSOLETE_FLAGS:
            if not eq and i < len(args) and not args[i].startswith("-"):
                i += 1
            warnings.append(f"skydns: ignoring old SkyDNS flag -{name} (no meaning here)")
            continue
        if name not in longs:
            if not arg.startswith("--"):  # click would read -bogus as -b -o -g...
                close = difflib.get_close_matches(name, sorted(longs), n=1)
                raise click.NoSuchOption("-" + name, possibilities=["--" + c for c in close])
            out.append(arg)  # click reports it
            continue
        if name in booleans and eq:
            word = value.strip().lower()
            on, off = booleans[name]
            if word in _TRUE:
                out.append(on)
            elif word in _FALSE:
                if not off:
                    raise click.BadParameter(f"-{name} cannot be turned off", param_hint=f"'--{name}'")
                out.append(off)
            else:
                raise click.BadParameter(f"{value!r} is not a boolean; use true or false", param_hint=f"'--{name}'")
            continue
        out.append(f"--{name}" + (f"={value}" if eq else ""))
    return out, warnings


# -- the command -------------------------------------------------------------------------------

_FROM_RESOLV = "from /etc/resolv.conf"


@click.command(
    name="skydns",
    context_settings={"auto_envvar_prefix": "SKYDNS", "show_default": True, "max_content_width": 110},
    help="Serve SkyDNS records mirrored from etcd v3 over DNS (UDP and TCP), forwarding every "
         "other name to upstream resolvers. Old single-dash SkyDNS flags (-addr=...) work too. "
         "Time flags take 5s, 500ms, 1m30s or plain seconds.",
    epilog="Subcommand: skydns doctor [OPTIONS] checks the upstreams, forwarding loops and the etcd "
           "mirror of a running skydns (skydns doctor --help).",
)
@click.version_option(package_name="kube-skydns", prog_name="skydns")
@click.option("--addr", "addr", default=f"{_DEFAULTS.addr_host}:{_DEFAULTS.addr_port}", show_envvar=True,
              help="DNS listen address for UDP and TCP, host:port or [v6]:port.")
@click.option("--machines", "machines", envvar=["SKYDNS_MACHINES", "ETCD_MACHINES"], show_envvar=True,
              default=",".join(f"http://{e}" for e in _DEFAULTS.etcd_endpoints),
              help="etcd endpoints, comma-separated: http://host:port, https://host:port or host:port.")
@click.option("--domain", "domain", default=",".join(_DEFAULTS.domains), show_envvar=True,
              help="Zones served from etcd, comma-separated (e.g. cluster.local.).")
@click.option("--path-prefix", "path_prefix", default=_DEFAULTS.prefix, show_envvar=True,
              help="etcd key prefix of the records (/<prefix>/local/cluster/...).")
@click.option("--nameservers", "nameservers", default=None, show_default=_FROM_RESOLV, show_envvar=True,
              help="Upstream resolvers for names outside the zones, ip[:port] comma-separated "
                   "(port 53 by default; '' for none).")
@click.option("--ns-rotate/--no-ns-rotate", "ns_rotate", default=_DEFAULTS.ns_rotate, show_envvar=True,
              help="Rotate the upstream a forwarded query starts at (else always the first).")
@click.option("--no-rec/--rec", "no_rec", default=_DEFAULTS.no_rec, show_envvar=True,
              help="Never forward: names outside the zones get SERVFAIL.")
@click.option("--round-robin/--no-round-robin", "round_robin", default=_DEFAULTS.round_robin, show_envvar=True,
              help="Rotate the order of A/AAAA records per answer (CNAMEs stay first).")
@click.option("--ca-cert", "ca_cert", envvar=["SKYDNS_CA_CERT", "ETCD_CACERT"], show_envvar=True, default=None,
              type=click.Path(exists=True, dir_okay=False), help="CA certificate (PEM) to verify etcd with.")
@click.option("--tls-pem", "tls_pem", envvar=["SKYDNS_TLS_PEM", "ETCD_TLSPEM"], show_envvar=True, default=None,
              type=click.Path(exists=True, dir_okay=False), help="Client certificate (PEM) for etcd.")
@click.option("--tls-key", "tls_key", envvar=["SKYDNS_TLS_KEY", "ETCD_TLSKEY"], show_envvar=True, default=None,
              type=click.Path(exists=True, dir_okay=False), help="Client key (PEM) for etcd.")
@click.option("--http-addr", "http_addr", default=f"{_DEFAULTS.http_host}:{_DEFAULTS.http_port}", show_envvar=True,
              help="Listen address of /metrics, /health and /ready, host:port.")
@click.option("--workers", "workers", type=click.IntRange(1, 256), default=_DEFAULTS.workers, show_envvar=True,
              help="Processes sharing the DNS port with SO_REUSEPORT, each with its own mirror.")
@click.option("--ttl", "ttl", type=click.IntRange(0, 2**31 - 1), default=_DEFAULTS.ttl, show_envvar=True,
              help="TTL of records without one, seconds.")
@click.option("--negative-ttl", "negative_ttl", type=click.IntRange(0, 2**31 - 1), default=_DEFAULTS.negative_ttl,
              show_envvar=True, help="TTL of NXDOMAIN/NODATA answers (SOA minimum), seconds.")
@click.option("--max-answers", "max_answers", type=click.IntRange(1), default=_DEFAULTS.max_answers,
              show_envvar=True, help="Most records in one answer.")
@click.option("--pods", "pods", type=click.Choice(["disabled", "insecure"]), default=_DEFAULTS.pods,
              show_envvar=True, help="a-b-c-d.<ns>.pod.<zone> names: only from etcd (disabled) or "
                                     "answered from the name (insecure).")
@click.option("--pods-ttl", "pods_ttl", type=click.IntRange(0, 2**31 - 1), default=_DEFAULTS.pods_ttl,
              show_envvar=True, help="TTL of pod names answered from the name (--pods=insecure), seconds "
                                     "(kube2sky's record TTL, so cluster answers share one TTL).")
@click.option("--hostmaster", "hostmaster", default=_DEFAULTS.hostmaster, show_envvar=True,
              help="SOA mailbox (hostmaster@example.com or a name); empty: hostmaster.<zone>.")
@click.option("--edns-payload", "edns_payload", type=click.IntRange(512, 65535), default=_DEFAULTS.edns_payload,
              show_envvar=True, help="Our EDNS0 UDP payload size, bytes.")
@click.option("--lameduck", "lameduck", type=click.FloatRange(0), default=_DEFAULTS.lameduck, show_envvar=True,
              help="After SIGTERM keep answering this long while /ready is 503, seconds.")
@click.option("--log-level", "log_level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=_DEFAULTS.log_level, show_envvar=True, help="Log level.")
@click.option("--verbose", "verbose", is_flag=True, default=False, show_envvar=True,
              help="Same as --log-level=debug (old SkyDNS -verbose).")
@click.option("--udp-rcvbuf", "udp_rcvbuf", type=click.IntRange(0), default=_DEFAULTS.udp_rcvbuf, show_envvar=True,
              help="UDP receive buffer to ask for (SO_RCVBUF), bytes; capped by net.core.rmem_max (0: kernel default).")
@click.option("--udp-batch", "udp_batch", type=click.IntRange(0, 1024), default=_DEFAULTS.udp_batch, show_envvar=True,
              help="Most UDP datagrams read and answered per system call (Linux recvmmsg/sendmmsg); "
                   "0: one per call.")
@click.option("--compiled-hits/--no-compiled-hits", "compiled_hits", default=_DEFAULTS.compiled_hits,
              show_envvar=True, help="Answer the cached hits of a UDP batch with the compiled loop (skydns._hits) "
                                     "when it is built; off: the Python loop (same answers, more CPU).")
@click.option("--answer-cache-size", "answer_cache_size", type=click.IntRange(0), hidden=True,
              default=_DEFAULTS.answer_cache_size, show_envvar=True,
              help="Encoded answers kept for the hot path; 0 turns the cache off (benchmarks).")
@click.option("--answer-cache-mib", "answer_cache_mib", type=click.IntRange(1), default=_DEFAULTS.answer_cache_mib,
              show_envvar=True, help="Most memory the encoded answers of local names take, MiB (oldest go first).")
@forwarding.click_options  # FORWARD helper: --forward-policy, --max-concurrent, --stub-domain, --cache-*, --hosts...
def command(**params: Any) -> None:
    app.run(build_settings(params))


use_durations(command)


def _doctor_command() -> click.Command:
    from skydns import doctor

    return use_durations(doctor._command())


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 2 with one line on a bad flag or value."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog, command_ = "skydns", command
    try:
        if argv[:1] == ["doctor"]:  # FORWARD helper: `skydns doctor ...` (skydns/doctor.py)
            prog, command_, argv = "skydns doctor", _doctor_command(), argv[1:]
        args, warnings = preprocess(argv, command_)
        for line in warnings:
            click.echo(line, err=True)
        code = command_.main(args, prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"{prog}: error: {exc.format_message()}".replace("\n", " "), err=True)
        raise SystemExit(2) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        raise SystemExit(1) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
