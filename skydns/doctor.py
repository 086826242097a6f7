"""`skydns doctor`: check the upstreams, the loop check and the mirror, print a table.

EDGE, a one-shot tool (`python -m skydns.doctor` or the `skydns doctor` subcommand).

Rules:
1. Every upstream (default group and stub domains) is asked directly for the cluster names
   and the public names; skydns itself is asked the same names. The table shows what each
   one answered (rcode and record count, or timeout/error).
2. Problems, each one line naming the culprit: skydns not answering a cluster or public name;
   a default upstream failing a public name that another upstream resolves (the "one of two
   upstreams cannot resolve public names" case); an upstream answering nothing at all; a
   public name no upstream resolves; a stub-domain upstream not answering its domain; a
   forwarding loop (our probe sent to an upstream reached skydns, seen in skydns's
   skydns_forward_loop_probes_received_total, or skydns itself reports one); the mirror
   disagreeing with etcd (record count, or skydns ahead of etcd's revision); a value in etcd
   that is not a valid record (key and reason, at most ``BAD_SHOWN`` of them listed).
3. Exit code 0 when there is no problem, 1 otherwise (2 for a bad command line).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sys
import urllib.request

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from prometheus_client import parser as prom_parser

from skydns import forwarding
from skydns import settings as settings_mod

DEFAULT_PUBLIC_NAMES = ("example.com.", "kubernetes.io.")
# Most bad etcd values listed one by one in the report (the rest are counted).
BAD_SHOWN = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """What the doctor checks besides the skydns Settings."""

    server: settings_mod.Upstream  # skydns's DNS address to query
    public_names: tuple[str, ...] = DEFAULT_PUBLIC_NAMES
    cluster_names: tuple[str, ...] = ()  # default: kubernetes.default.svc.<first zone>
    metrics_url: str = ""  # "" -> no loop probe accounting, no mirror comparison
    check_etcd: bool = True
    timeout: float = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    """One answer in the table."""

    rcode: int | None  # None: no reply
    records: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rcode == dns.rcode.NOERROR and self.records > 0

    def __str__(self) -> str:
        if self.rcode is None:
            return self.error or "no reply"
        text = dns.rcode.to_text(self.rcode)
        return f"{text} {self.records}" if self.rcode == dns.rcode.NOERROR else text


@dataclasses.dataclass(slots=True)
class Row:
    title: str
    cells: dict[str, Cell] = dataclasses.field(default_factory=dict)
    loop: str = "-"


@dataclasses.dataclass(slots=True)
class Report:
    columns: list[str]
    rows: list[Row]
    mirror: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    bad: dict[str, str] = dataclasses.field(default_factory=dict)  # etcd key -> why it is not served

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


async def ask(address: settings_mod.Upstream, name: str, rdtype: int, timeout: float, rng: random.Random) -> Cell:
    """One query (UDP, TCP on truncation) to one server."""
    upstream = forwarding.Upstream(address)
    query = dns.message.make_query(name, rdtype, id=rng.getrandbits(16))
    try:
        reply = await forwarding.exchange(query, upstream, timeout)
    except forwarding.ForwardError as exc:
        return Cell(None, 0, "timeout" if "timeout" in str(exc) else "network error")
    records = sum(len(rrset) for rrset in reply.answer if rrset.rdtype == rdtype)
    return Cell(reply.rcode(), records)


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-given URL
        return resp.read().decode("utf-8", "replace")


async def scrape(url: str, timeout: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a /metrics page: (name, sorted labels) -> value."""
    text = await asyncio.to_thread(_fetch, url, timeout)
    out = {}
    for family in prom_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def _mirror(settings: settings_mod.Settings, samples: dict | None, report: Report) -> None:
    from skydns import etcdwatch, store

    if samples is None:
        report.mirror = "mirror: not compared (skydns /metrics not available)"
        report.problems.append("cannot read skydns /metrics: mirror state unknown")
        return
    keys = _value(samples, "skydns_etcd_keys")
    revision = _value(samples, "skydns_etcd_revision")
    try:
        client = etcdwatch.make_client(settings)
        try:
            got = await asyncio.wait_for(client.get_prefix(f"/{settings.prefix}/".encode()), 10)
        finally:
            await asyncio.wait_for(client.close(), 2)
    except Exception as exc:  # noqa: BLE001 - any etcd failure is reported, not raised
        report.mirror = f"mirror: etcd unreachable ({type(exc).__name__}: {exc})"
        report.problems.append(f"etcd {', '.join(settings.etcd_endpoints)} unreachable: {type(exc).__name__}")
        return
    view = store.Store(settings.prefix)
    etcd_revision = got.header.revision
    view.replace(((kv.key.decode("utf-8", "replace"), kv.value) for kv in got), etcd_revision)
    bad = f", {len(view.bad)} bad values" if view.bad else ""
    report.bad = dict(view.bad)
    for key, reason in sorted(view.bad.items())[:BAD_SHOWN]:
        why = reason[len(key) + 2:] if reason.startswith(key + ": ") else reason
        report.problems.append(f"bad value in etcd at {key} (not served): {why}")
    if len(view.bad) > BAD_SHOWN:
        report.problems.append(f"{len(view.bad) - BAD_SHOWN} more bad values in etcd (not served)")
    ours = f"skydns {int(keys) if keys is not None else '?'} records at revision {int(revision) if revision is not None else '?'}"
    report.mirror = f"mirror: etcd {len(view)} records{bad} at revision {etcd_revision}; {ours}"
    if keys is None or revision is None:
        report.problems.append("skydns /metrics has no skydns_etcd_keys/skydns_etcd_revision: mirror state unknown")
    elif int(keys) != len(view):
        report.problems.append(f"mirror out of sync: etcd holds {len(view)} records, skydns serves {int(keys)}")
    elif revision > etcd_revision:
        report.problems.append(f"mirror revision {int(revision)} is ahead of etcd's {etcd_revision} (another etcd?)")
    else:
        report.mirror += ": in sync"


async def _loop_probe(
    address: settings_mod.Upstream, options: Options, rng: random.Random
) -> tuple[float | None, float | None]:
    name = f"{rng.getrandbits(64):016x}.doctor.{forwarding.LOOP_SUFFIX}"
    before = after = None
    try:
        before = _value(await scrape(options.metrics_url, options.timeout), "skydns_forward_loop_probes_received_total")
    except Exception:  # noqa: BLE001
        return None, None
    await ask(address, name, dns.rdatatype.HINFO, options.timeout, rng)
    try:
        after = _value(await scrape(options.metrics_url, options.timeout), "skydns_forward_loop_probes_received_total")
    except Exception:  # noqa: BLE001
        return before, None
    return before, after


async def diagnose(settings: settings_mod.Settings, options: Options, rng: random.Random | None = None) -> Report:
    """Run every check (rule 1-2) and return the report."""
    rng = rng or random.Random()
    zone = settings.domains[0] if settings.domains else "cluster.local."
    cluster = options.cluster_names or (f"kubernetes.default.svc.{zone}",)
    names = [*cluster, *options.public_names]
    report = Report(columns=[*names, "loop"], rows=[])

    async def row_for(title: str, address: settings_mod.Upstream) -> Row:
        cells = await asyncio.gather(*(ask(address, n, dns.rdatatype.A, options.timeout, rng) for n in names))
        return Row(title, dict(zip(names, cells)))

    server_row = await row_for(f"skydns {options.server}", options.server)
    upstream_rows = [await row_for(f"upstream {a}", a) for a in settings.nameservers]
    stub_rows = []
    for domain, addresses in settings.stub_domains:
        for address in addresses:
            cell = await ask(address, domain, dns.rdatatype.SOA, options.timeout, rng)
            stub_rows.append((domain, address, cell))
    report.rows = [server_row, *upstream_rows]

    samples = None
    if options.metrics_url:
        try:
            samples = await scrape(options.metrics_url, options.timeout)
        except Exception:  # noqa: BLE001 - reported below
            samples = None

    # rule 2: skydns itself
    for name in names:
        cell = server_row.cells[name]
        if not cell.ok:
            what = "cluster" if name in cluster else "public"
            report.problems.append(f"skydns {options.server} does not resolve {what} name {name} ({cell})")

    # rule 2: default upstreams against each other
    for row, address in zip(upstream_rows, settings.nameservers):
        if all(c.rcode is None for c in row.cells.values()):
            report.problems.append(f"upstream {address} does not answer at all ({row.cells[names[0]]})")
            continue
        for name in options.public_names:
            cell = row.cells[name]
            if cell.ok:
                continue
            good = [str(a) for r, a in zip(upstream_rows, settings.nameservers) if r.cells[name].ok]
            if good:
                report.problems.append(
                    f"upstream {address} cannot resolve public name {name}: {cell} (resolved by {', '.join(good)})")
    for name in options.public_names:
        if upstream_rows and not any(r.cells[name].ok for r in upstream_rows):
            report.problems.append(f"no upstream resolves public name {name}")
    for domain, address, cell in stub_rows:
        if cell.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            report.problems.append(f"stub-domain upstream {address} for {domain} does not answer it ({cell})")

    # rule 2: loops
    for row, address in [*zip(upstream_rows, settings.nameservers), *((None, a) for _, a, _ in stub_rows)]:
        reason = ""
        if address == options.server:
            reason = "is skydns itself"
        elif samples is not None:
            if _value(samples, "skydns_forward_loop_detected", to=str(address)) == 1:
                reason = "skydns's own loop check found a loop"
            before, after = await _loop_probe(address, options, rng)
            if before is not None and after is not None and after > before:
                reason = reason or "a probe sent to it reached skydns"
            verdict = "LOOP" if reason else ("no" if after is not None else "unknown")
        else:
            verdict = "unknown"
        if reason:
            verdict = "LOOP"
            report.problems.append(f"forwarding loop via {address}: {reason}")
        if row is not None:
            row.loop = verdict

    if options.check_etcd and options.metrics_url:
        await _mirror(settings, samples, report)
    else:
        report.mirror = "mirror: not checked"
    for domain, address, cell in stub_rows:
        report.rows.append(Row(f"stub {domain} {address}", {names[0]: Cell(None, 0, f"SOA: {cell}")}))
    return report


def render(report: Report) -> str:
    """The table, the mirror line and the problems, as text."""
    header = ["", *report.columns]
    lines = [[row.title, *(str(row.cells[c]) if c in row.cells else "" for c in report.columns[:-1]), row.loop]
             for row in report.rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in [header, *lines]]
    out.append("")
    if report.mirror:
        out.append(report.mirror)
    if report.problems:
        out.append(f"PROBLEMS ({len(report.problems)}):")
        out.extend(f"  - {p}" for p in report.problems)
    else:
        out.append("OK: no problem found")
    return "\n".join(out) + "\n"


def run(settings: settings_mod.Settings, options: Options) -> int:
    """Diagnose, print the report to stdout, return the exit code (for the CLI)."""
    report = asyncio.run(diagnose(settings, options))
    sys.stdout.write(render(report))
    sys.stdout.flush()
    return report.exit_code


# ---------------------------------------------------------------------------------------------
# standalone command: python -m skydns.doctor (env prefix SKYDNS_, like the server)


def read_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[settings_mod.Upstream, ...]:
    """The nameserver lines of a resolv.conf (unreadable file: none)."""
    found = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    try:
                        found.append(forwarding.parse_upstream(fields[1].split("%", 1)[0]))
                    except ValueError:
                        continue
    except OSError:
        return ()
    return tuple(found)


def _command():
    import click

    @click.command(name="doctor", context_settings={"auto_envvar_prefix": "SKYDNS", "show_default": True})
    @click.option("--addr", "--server", "addr", default="127.0.0.1:53", show_envvar=True,
                  help="skydns DNS address to check (0.0.0.0 means 127.0.0.1).")
    @click.option("--http-addr", "http_addr", default="127.0.0.1:9153", show_envvar=True,
                  help="skydns /metrics address, host:port (0.0.0.0 means 127.0.0.1).")
    @click.option("--metrics-url", "metrics_url", default=None, show_envvar=True,
                  help="Full /metrics URL ('' to skip the loop probe accounting and the mirror check).")
    @click.option("--nameservers", default="", show_envvar=True, help="Upstreams ip:port,... (default: /etc/resolv.conf).")
    @click.option("--stub-domain", "stub_domains", multiple=True, metavar="DOMAIN=IP[:PORT][,...]", show_envvar=True)
    @click.option("--domain", default="cluster.local.", show_envvar=True, help="Cluster zone(s), comma-separated.")
    @click.option("--machines", envvar=["SKYDNS_MACHINES", "ETCD_MACHINES"], show_envvar=True,
                  default="http://127.0.0.1:2379", help="etcd endpoints, comma-separated.")
    @click.option("--path-prefix", default="skydns", show_envvar=True, help="etcd key prefix.")
    @click.option("--ca-cert", envvar=["SKYDNS_CA_CERT", "ETCD_CACERT"], default="", show_envvar=True)
    @click.option("--tls-pem", envvar=["SKYDNS_TLS_PEM", "ETCD_TLSPEM"], default="", show_envvar=True)
    @click.option("--tls-key", envvar=["SKYDNS_TLS_KEY", "ETCD_TLSKEY"], default="", show_envvar=True)
    @click.option("--public-name", "public_names", multiple=True, default=DEFAULT_PUBLIC_NAMES,
                  help="Public names every upstream must resolve (repeatable).")
    @click.option("--cluster-name", "cluster_names", multiple=True,
                  help="Cluster names skydns must answer (default: kubernetes.default.svc.<first zone>).")
    @click.option("--no-etcd", is_flag=True, help="Skip the mirror-against-etcd check.")
    @click.option("--timeout", type=float, default=2.0, help="Per-query timeout, seconds.")
    def doctor(addr, http_addr, metrics_url, nameservers, stub_domains, domain, machines, path_prefix, ca_cert,
               tls_pem, tls_key, public_names, cluster_names, no_etcd, timeout):
        """Check the upstreams, forwarding loops and the etcd mirror of a running skydns.

        Exit code 0 when nothing is wrong, 1 when a problem was found.
        """
        logging.basicConfig(level=logging.ERROR, format="doctor: %(name)s: %(message)s")
        try:
            server = forwarding.parse_upstream(addr)
            http = forwarding.parse_upstream(http_addr)
            ups = tuple(forwarding.parse_upstream(s) for s in nameservers.replace(",", " ").split())
            stubs = tuple(forwarding.parse_stub_domain(i) for v in stub_domains for i in v.split())
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if server.host in ("0.0.0.0", "::"):
            server = settings_mod.Upstream("127.0.0.1" if server.host == "0.0.0.0" else "::1", server.port)
        if metrics_url is None:
            host = "127.0.0.1" if http.host in ("0.0.0.0", "") else http.host
            metrics_url = f"http://{settings_mod.Upstream(host, http.port)}/metrics"
        zones = tuple(z if z.endswith(".") else z + "." for z in domain.replace(",", " ").split())
        settings = settings_mod.Settings(
            domains=zones or ("cluster.local.",), nameservers=ups or read_resolv_conf(), stub_domains=stubs,
            etcd_endpoints=tuple(machines.replace(",", " ").split()), prefix=path_prefix.strip("/"),
            etcd_ca_cert=ca_cert, etcd_tls_pem=tls_pem, etcd_tls_key=tls_key)
        fqdn = tuple(n if n.endswith(".") else n + "." for n in public_names)
        options = Options(server, fqdn, tuple(n if n.endswith(".") else n + "." for n in cluster_names),
                          metrics_url, not no_etcd, timeout)
        sys.exit(run(settings, options))

    return doctor


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m skydns.doctor`."""
    _command().main(args=argv, prog_name="skydns doctor")


if __name__ == "__main__":
    main()
