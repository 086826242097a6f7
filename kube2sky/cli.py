"""The kube2sky command: flags -> settings.Settings -> app.run.

Rules (STYLE 5.6):
1. Parse, validate (click.UsageError), build Settings, call app.run. No other logic.
2. Every option has an environment variable KUBE2SKY_<PARAMETER NAME>; defaults come from
   settings.Settings.
3. The Go kube2sky's spellings keep working: single dash (-domain=cluster.local) and
   underscores (--etcd_mutation_timeout, --kube_master_url, --kubecfg_file).
4. A bad flag or value exits 2 with one line on stderr: "kube2sky: error: ..." (the style of
   skydns and healthz); an unknown single-dash flag is named as given (-bogus, not -b).
5. Time flags take a Go duration (10s, 500ms, 1m30s) or plain seconds (settings.parse_duration);
   TTL flags take whole seconds.
6. ``--check-api`` asks the Kubernetes API once (discovery) and exits 0, or 1 with one line
   "kube2sky: error: ..." saying why it cannot be reached (`make run` calls it first).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import ipaddress
import logging
import re
import sys
from typing import Any

import click
import prometheus_client

from kube2sky import app, etcdwriter, k8swatch
from kube2sky import settings as settings_mod

logger = logging.getLogger(__name__)

D = settings_mod.Settings()
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def package_version() -> str:
    """The installed kube-skydns version ("0.1.0"), "unknown" when not installed."""
    try:
        return importlib.metadata.version("kube-skydns")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_duration(text: str, flag: str) -> float:
    """'10s', '500ms', '1m30s' or plain seconds -> seconds."""
    try:
        return settings_mod.parse_duration(text)
    except ValueError as err:
        raise click.UsageError(f"{flag}: {err}") from None


class Seconds(click.ParamType):
    """A whole number of seconds, also written as a duration (30s, 5m)."""

    name = "duration"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            seconds = float(value) if isinstance(value, (int, float)) else settings_mod.parse_duration(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        if seconds != int(seconds) or not self.low <= seconds <= self.high:
            self.fail(f"{value!r}: want whole seconds from {self.low} to {self.high} (e.g. 30 or 30s)", param, ctx)
        return int(seconds)


def parse_etcd_servers(text: str) -> tuple[str, ...]:
    out = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        rest = item
        tls = rest.startswith("https://")
        for scheme in ("http://", "https://"):
            if rest.startswith(scheme):
                rest = rest[len(scheme):]
        rest = rest.rstrip("/")
        if "://" in rest or "/" in rest:
            raise click.UsageError(f"--etcd-server: want http://host:port, got {item!r}")
        host, sep, port = rest.rpartition(":")
        if not sep:
            host, port = rest, "2379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.UsageError(f"--etcd-server: want http://host:port, got {item!r}")
        out.append(f"https://{host}:{port}" if tls else f"{host}:{port}")
    if not out:
        raise click.UsageError("--etcd-server: give at least one http://host:port")
    return tuple(out)


def check_etcd_tls(cafile: str, certfile: str, keyfile: str) -> None:
    """Each given TLS file must be readable PEM; the certificate and key come together."""
    try:
        etcdwriter.check_tls_files(etcdwriter.TLSFiles(cafile, certfile, keyfile))
    except etcdwriter.ConfigError as err:
        raise click.UsageError(str(err)) from None


def parse_domain(text: str) -> str:
    zone = text.strip().lower().rstrip(".")
    if not zone or not all(_LABEL.match(label) for label in zone.split(".")):
        raise click.UsageError(f"--domain: {text!r} is not a domain name")
    return zone + "."


def parse_namespaces(values: str) -> frozenset[str]:
    names = frozenset(n for n in re.split(r"[,\s]+", values.strip()) if n)
    bad = sorted(n for n in names if not _LABEL.match(n))
    if bad:
        raise click.UsageError(f"--namespaces: not namespace names: {', '.join(bad)}")
    return names


class Command(click.Command):
    """Accepts the Go kube2sky's flag spellings before click parses."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize(self, args))


def normalize(command: click.Command, args: list[str]) -> list[str]:
    """-domain=x -> --domain=x; --kube_master_url -> --kube-master-url (known options only)."""
    known = {opt for p in command.params for opt in getattr(p, "opts", ()) + getattr(p, "secondary_opts", ())}
    out = []
    for arg in args:
        if arg == "--":
            out.extend(args[len(out):])
            break
        if arg.startswith("-") and len(arg) > 2 and arg[1] != "-" or arg.startswith("--"):
            name, sep, value = arg.partition("=")
            candidate = "--" + name.lstrip("-").replace("_", "-")
            if candidate in known and candidate != name:
                arg = candidate + sep + value
            elif candidate not in known and name not in known and not name.startswith("--"):
                close = difflib.get_close_matches(candidate, sorted(k for k in known if k.startswith("--")), n=1)
                raise click.NoSuchOption(name, possibilities=close)
        out.append(arg)
    return out


@click.command(
    "kube2sky", cls=Command,
    context_settings={"auto_envvar_prefix": "KUBE2SKY", "show_default": True,
                      "help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option("--domain", default="cluster.local", show_envvar=True, help="Cluster DNS zone.")
@click.option("--etcd-server", "etcd_server", default="http://127.0.0.1:2379", show_envvar=True,
              help="etcd endpoints, comma-separated http://host:port (the Go kube2sky used :4001); "
                   "https:// means TLS.")
@click.option("--etcd-cafile", "etcd_cafile", default="", show_envvar=True,
              help="CA bundle (PEM) that signed etcd's server certificate; turns TLS on.")
@click.option("--etcd-certfile", "etcd_certfile", default="", show_envvar=True,
              help="Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-keyfile.")
@click.option("--etcd-keyfile", "etcd_keyfile", default="", show_envvar=True,
              help="Private key (PEM) of --etcd-certfile.")
@click.option("--etcd-mutation-timeout", "etcd_mutation_timeout", default="10s", show_envvar=True,
              help="Timeout of one etcd request (10s, 500ms or seconds); errors are retried, never fatal.")
@click.option("--resync-period", "resync_period", default="5m", show_envvar=True,
              help="Full sync (re-read etcd, repair drift) this often (5m, 30s or seconds); 0 turns it off.")
@click.option("--prefix", default=D.prefix, show_envvar=True, help="etcd key prefix of the records.")
@click.option("--max-txn-ops", "max_txn_ops", type=click.IntRange(1, 100000), default=D.max_txn_ops,
              show_envvar=True, help="Most operations in one etcd transaction (etcd's --max-txn-ops).")
@click.option("--ttl", type=Seconds(0, 2**31 - 1), default=D.ttl, show_envvar=True,
              help="TTL of every record, seconds (or 30s, 5m).")
@click.option("--kube-master-url", "kube_master_url", default="", show_envvar=True,
              help="API server URL ($VARS expanded, e.g. https://${KUBERNETES_SERVICE_HOST}:"
                   "${KUBERNETES_SERVICE_PORT}); empty: kubeconfig, else in-cluster.")
@click.option("--kubecfg-file", "kubecfg_file", default="", show_envvar=True,
              help="kubeconfig file (KUBECONFIG is honoured too).")
@click.option("--token-file", "token_file", default="", show_envvar=True,
              help="Bearer token file for --kube-master-url (in a pod: the service account's).")
@click.option("--ca-file", "ca_file", default="", show_envvar=True, help="CA bundle for the API server.")
@click.option("--insecure-skip-tls-verify", "insecure_skip_tls_verify", is_flag=True, default=False,
              show_envvar=True, help="Do not verify the API server certificate (test clusters only).")
@click.option("--manifests", default=None, show_envvar=True,
              type=click.Path(exists=True, file_okay=True, dir_okay=True),
              help="Read objects from this folder of YAML instead of the API (re-read on change).")
@click.option("--endpoints-source", "--endpoint-source", "endpoints_source", show_envvar=True,
              type=click.Choice([e.value for e in settings_mod.EndpointSource]), default=D.endpoint_source.value,
              help="Where headless services' endpoints come from; auto asks API discovery.")
@click.option("--pods", type=click.Choice([m.value for m in settings_mod.PodsMode]), default=D.pods.value,
              show_envvar=True, help="Pod records a-b-c-d.<ns>.pod.<zone> (verified: from the Pod objects).")
@click.option("--namespaces", default="", show_envvar=True,
              help="Publish only these namespaces (comma-separated); empty: all.")
@click.option("--dns-service", "dns_service", default=D.dns_service, show_envvar=True,
              help="namespace/name of the DNS service; its ClusterIP becomes ns.dns.<zone>. Empty: none.")
@click.option("--legacy-names/--no-legacy-names", "legacy_names", default=D.legacy_names, show_envvar=True,
              help="Also publish <svc>.<ns>.<zone>.")
@click.option("--leader-elect", "leader_elect", is_flag=True, default=False, show_envvar=True,
              help="Elect one writer among replicas through an etcd lease.")
@click.option("--leader-key", "leader_key", default="", show_envvar=True,
              help="etcd key of the leader lease; empty: /<prefix>-leader/kube2sky.")
@click.option("--leader-ttl", "leader_ttl", type=Seconds(2, 3600), default=D.leader_ttl,
              show_envvar=True, help="Lease TTL of the leader key, seconds (or 15s, 1m).")
@click.option("--healthz-port", "healthz_port", type=click.IntRange(0, 65535), default=D.healthz_port,
              show_envvar=True, help="Port of /readiness, /healthz and /metrics.")
@click.option("--healthz-host", "--healthz-addr", "healthz_host", default=D.healthz_host, show_envvar=True,
              help="Address of the health and metrics server.")
@click.option("--dry-run", "dry_run", is_flag=True, default=False, show_envvar=True,
              help="Print the records instead of writing them (with --manifests: print and exit).")
@click.option("--log-level", "log_level", default="info", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.")
@click.option("--v", "glog_v", type=int, default=0, hidden=True, expose_value=True,
              help="Accepted for the Go kube2sky's glog flags; --log-level=debug when >= 4.")
@click.option("--logtostderr", "--alsologtostderr", "glog_stderr", is_flag=True, hidden=True,
              help="Accepted for the Go kube2sky's glog flags; logs always go to stderr.")
@click.option("--check-api", "check_api", is_flag=True, default=False,
              help="Ask the Kubernetes API once (discovery) and exit: 0 when it answers, 1 with the reason.")
@click.version_option(package_name="kube-skydns", prog_name="kube2sky")
def command(**opts) -> None:
    """Keep SkyDNS records in etcd equal to the cluster's Services and endpoints."""
    level = "debug" if opts.pop("glog_v") >= 4 else opts["log_level"]
    opts.pop("glog_stderr")
    check = opts.pop("check_api")
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = build_settings(opts)
    if check:
        sys.exit(check_api(settings))
    logger.info("kube2sky %s starting", package_version())
    app.run(settings)


def check_api(settings: settings_mod.Settings) -> int:
    """One discovery request to the API (or a read of --manifests): 0 and a line on stdout when it
    answers, else 1 and "kube2sky: error: ..." on stderr."""
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # the one line below says it all
    try:
        source = app.make_source(settings)
        endpoints = "endpointslices" if source.served(k8swatch.ENDPOINT_SLICES) else "endpoints"
    except Exception as err:  # noqa: BLE001 - ConfigError, ApiError: each is one line already
        click.echo(f"kube2sky: error: cannot use the Kubernetes API: {err}", err=True)
        return 1
    click.echo(f"kube2sky: the Kubernetes API at {getattr(source, 'host', settings.manifests)} answers "
               f"(endpoints from {endpoints})")
    return 0


def build_settings(opts: dict) -> settings_mod.Settings:
    dns_service = opts["dns_service"].strip()
    if dns_service and settings_mod.Settings(dns_service=dns_service).dns_service_ref is None:
        raise click.UsageError(f"--dns-service: want namespace/name, got {dns_service!r}")
    try:
        ipaddress.ip_network(D.service_cidr)
    except ValueError as err:  # pragma: no cover - a constant
        raise click.UsageError(str(err)) from None
    prefix = opts["prefix"].strip().strip("/")
    if not prefix or "/" in prefix:
        raise click.UsageError(f"--prefix: want one path segment like skydns, got {opts['prefix']!r}")
    check_etcd_tls(opts["etcd_cafile"].strip(), opts["etcd_certfile"].strip(), opts["etcd_keyfile"].strip())
    return settings_mod.Settings(
        domain=parse_domain(opts["domain"]),
        prefix=prefix,
        ttl=opts["ttl"],
        legacy_names=opts["legacy_names"],
        pods=settings_mod.PodsMode(opts["pods"]),
        namespaces=parse_namespaces(opts["namespaces"]),
        dns_service=dns_service,
        endpoint_source=settings_mod.EndpointSource(opts["endpoints_source"]),
        etcd_endpoints=parse_etcd_servers(opts["etcd_server"]),
        etcd_cafile=opts["etcd_cafile"].strip(),
        etcd_certfile=opts["etcd_certfile"].strip(),
        etcd_keyfile=opts["etcd_keyfile"].strip(),
        max_txn_ops=opts["max_txn_ops"],
        etcd_mutation_timeout=parse_duration(opts["etcd_mutation_timeout"], "--etcd-mutation-timeout"),
        leader_elect=opts["leader_elect"],
        dry_run=opts["dry_run"],
        healthz_port=opts["healthz_port"],
        healthz_host=opts["healthz_host"],
        kube_master_url=opts["kube_master_url"].strip(),
        kubecfg_file=opts["kubecfg_file"].strip(),
        kube_token_file=opts["token_file"].strip(),
        kube_ca_file=opts["ca_file"].strip(),
        manifests=opts["manifests"] or "",
        kube_insecure=opts["insecure_skip_tls_verify"],
        leader_key=opts["leader_key"].strip(),
        leader_ttl=opts["leader_ttl"],
        resync_period=parse_duration(opts["resync_period"], "--resync-period"),
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line on stderr and exit 2 for a bad flag or value."""
    prometheus_client.disable_created_metrics()  # one rule in the three daemons: no *_created series
    try:
        command.main(args=argv, prog_name="kube2sky", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:  # pragma: no cover - not configured
        click.echo(err.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as err:
        click.echo(f"kube2sky: error: {err.format_message()}".replace("\n", " "), err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
