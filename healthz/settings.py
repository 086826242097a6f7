"""healthz settings: one frozen value built by the CLI; every default lives here.

PURE: no I/O, no clock. Rules:
1. Defaults live only in this module (the CLI reads them from here).
2. Times are seconds (float), ports are ints.
3. The spec parsers (parse_duration, parse_probe, parse_server) raise SpecError with a
   message that names the bad text; the CLI turns it into a one-line start-up error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

# Defaults, the exechealthz ones where exechealthz had the flag.
DEFAULT_PORT = 8080
DEFAULT_ADDRESS = "0.0.0.0"
DEFAULT_PERIOD = 2.0
DEFAULT_LATENCY = 30.0
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_DNS_PORT = 53
DEFAULT_QTYPE = "A"
DEFAULT_URL = "/healthz"

# DNS rcodes a probe may expect, by their dnspython text names.
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
# Query types a probe may ask (what a cluster DNS answers).
QTYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "MX", "NS", "SOA", "ANY")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """A flag value (duration, probe spec, server) that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class DnsProbe:
    """One native DNS probe: ask `qname`/`qtype` at `server`:`port` every period.

    Healthy when the reply has rcode `rcode` and, for NOERROR, at least `min_answers`
    answer records, and every address in `expect` is among the answer's rdata.
    """

    name: str
    qname: str
    qtype: str = DEFAULT_QTYPE
    server: str = "127.0.0.1"
    port: int = DEFAULT_DNS_PORT
    # Seconds to wait for one reply (UDP, then TCP if truncated) before "timeout".
    timeout: float = DEFAULT_PROBE_TIMEOUT
    # Expected rcode text ("NOERROR"); a different rcode is a failure with reason "rcode".
    rcode: str = "NOERROR"
    # Fewest answer records for a healthy NOERROR reply (0 accepts NODATA).
    min_answers: int = 1
    # Rdata texts (addresses, targets) that must all be in the answer, normalised.
    expect: tuple[str, ...] = ()
    # Ask over TCP from the start instead of UDP.
    tcp: bool = False

    @property
    def target(self) -> str:
        """The server as text, IPv6 in brackets: "127.0.0.1:53", "[::1]:53"."""
        return f"[{self.server}]:{self.port}" if ":" in self.server else f"{self.server}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class CommandProbe:
    """One exechealthz-style command, run as `sh -c <command>` every period; exit 0 is healthy."""

    name: str
    command: str
    # The HTTP path that serves this command alone (exechealthz -url); /healthz serves all.
    url: str = DEFAULT_URL
    # Seconds before the command is killed and counted as "timeout"; 0 means -latency.
    timeout: float = 0.0


Check = DnsProbe | CommandProbe


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything healthz needs to run. Times are seconds."""

    # HTTP listen address and port (exechealthz -port; it listened on all addresses).
    address: str = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    # Every check runs once per period, back to back if it takes longer (exechealthz -period).
    period: float = DEFAULT_PERIOD
    # A result older than this is a failure: "result too old" (exechealthz -latency).
    # It is also the start-up grace: without any result yet, /healthz is "pending" this long.
    latency: float = DEFAULT_LATENCY
    # Log only errors and health changes at WARNING and above (exechealthz -quiet).
    quiet: bool = False
    # Consecutive failed results before a check is unhealthy; 1 is exechealthz behaviour.
    failure_threshold: int = 1
    # What /healthz answers while a check has no result yet and the grace has not passed:
    # True -> 200 "ok (no result yet, starting)" (liveness, exechealthz); False -> 503 (readiness).
    pending_ok: bool = True
    # Reply with the command's output instead of "ok" on success (exechealthz -output).
    output: bool = False
    # The checks: native DNS probes and exechealthz commands; names are unique.
    probes: tuple[DnsProbe, ...] = ()
    commands: tuple[CommandProbe, ...] = ()

    @property
    def checks(self) -> tuple[Check, ...]:
        return (*self.probes, *self.commands)

    def command_timeout(self, command: CommandProbe) -> float:
        """Seconds a command may run before it is killed."""
        return command.timeout or self.latency

    def paths(self) -> dict[str, tuple[str, ...]]:
        """HTTP path -> names of the checks it serves, from the -url pairs.

        /healthz serves every check unless some -url claimed it explicitly (exechealthz
        compatibility: then it serves exactly the commands paired with it).
        """
        claimed: dict[str, list[str]] = {}
        for command in self.commands:
            claimed.setdefault(command.url, []).append(command.name)
        paths = {url: tuple(names) for url, names in claimed.items()}
        if DEFAULT_URL not in paths or not any(c.url != DEFAULT_URL for c in self.commands):
            paths[DEFAULT_URL] = tuple(check.name for check in self.checks)
        return paths


def parse_duration(text: str) -> float:
    """A Go duration ("2s", "500ms", "1m30s", "1.5h") or plain seconds ("2", "0.5") -> seconds."""
    value = text.strip()
    if not value:
        raise SpecError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_RE.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise SpecError(f"bad duration {text!r}: use 2s, 500ms, 1m30s or seconds") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise SpecError(f"bad duration {text!r}: must be a finite number >= 0")
    return seconds


def parse_server(text: str) -> tuple[str, int]:
    """"HOST", "HOST:PORT", "[V6]", "[V6]:PORT" or a bare IPv6 address -> (host, port)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise SpecError(f"bad server {text!r}: missing ']'")
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise SpecError(f"bad server {text!r}: expected :PORT after ']'")
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    if not host:
        raise SpecError(f"bad server {text!r}: empty host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"bad server {text!r}: {host!r} is not an IP address") from None
    port = DEFAULT_DNS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SpecError(f"bad server {text!r}: port {port_text!r} is not 1-65535")
        port = int(port_text)
    return host, port


def normalize_rdata(text: str) -> str:
    """Compare form of an expected answer: IPs compressed, names lower-case with a dot."""
    value = text.strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower() if value.endswith(".") else value.lower() + "."


def parse_probe(spec: str, default_timeout: float = DEFAULT_PROBE_TIMEOUT) -> DnsProbe:
    """NAME=QNAME[/TYPE]@SERVER[:PORT][,OPTION...] -> DnsProbe.

    Options, comma separated: timeout=DURATION, expect=ADDRESS (repeatable, or several
    joined by '+'), rcode=NAME (NOERROR, NXDOMAIN...), min-answers=N, tcp.
    """
    text = spec.strip()
    head, *options = text.split(",")
    name, sep, rest = head.partition("=")
    if not sep:
        raise SpecError(f"bad probe {spec!r}: expected NAME=QNAME[/TYPE]@SERVER[:PORT]")
    name = name.strip()
    if not _NAME_RE.match(name):
        raise SpecError(f"bad probe {spec!r}: name {name!r} must be letters, digits, '.', '_' or '-'")
    question, sep, server_text = rest.rpartition("@")
    if not sep or not question or not server_text:
        raise SpecError(f"bad probe {spec!r}: expected QNAME[/TYPE]@SERVER[:PORT] after '{name}='")
    qname, _, qtype = question.partition("/")
    qname, qtype = qname.strip(), (qtype.strip().upper() or DEFAULT_QTYPE)
    if not qname or len(qname) > 253 or any(not label for label in qname.rstrip(".").split(".")):
        raise SpecError(f"bad probe {spec!r}: bad query name {qname!r}")
    if qtype not in QTYPES:
        raise SpecError(f"bad probe {spec!r}: type {qtype!r} is not one of {', '.join(QTYPES)}")
    try:
        server, port = parse_server(server_text)
    except SpecError as exc:
        raise SpecError(f"bad probe {spec!r}: {exc}") from None
    fields: dict[str, object] = {"timeout": default_timeout}
    expect: list[str] = []
    for option in options:
        key, has_value, value = (part.strip() for part in option.partition("="))
        key = key.lower().replace("_", "-")
        try:
            if key == "timeout" and has_value:
                fields["timeout"] = parse_duration(value)
                if fields["timeout"] == 0:
                    raise SpecError("timeout must be > 0")
            elif key == "expect" and has_value and value:
                expect.extend(normalize_rdata(item) for item in value.split("+") if item.strip())
            elif key == "rcode" and has_value:
                if value.upper() not in RCODES:
                    raise SpecError(f"rcode {value!r} is not one of {', '.join(RCODES)}")
                fields["rcode"] = value.upper()
            elif key == "min-answers" and has_value:
                if not value.isdigit():
                    raise SpecError(f"min-answers {value!r} is not a number >= 0")
                fields["min_answers"] = int(value)
            elif key == "tcp" and not has_value:
                fields["tcp"] = True
            else:
                raise SpecError(
                    f"unknown option {option.strip()!r} (use timeout=, expect=, rcode=, min-answers=, tcp)"
                )
        except SpecError as exc:
            raise SpecError(f"bad probe {spec!r}: {exc}") from None
    if "rcode" in fields and fields["rcode"] != "NOERROR" and "min_answers" not in fields:
        fields["min_answers"] = 0
    fqdn = qname.lower() if qname.endswith(".") else qname.lower() + "."
    return DnsProbe(name=name, qname=fqdn, qtype=qtype, server=server, port=port,
                    expect=tuple(expect), **fields)  # type: ignore[arg-type]
