"""healthz command line: flags (exechealthz spellings plus native probes) -> Settings -> app.run.

EDGE (click). Rules:
1. Parse, validate, build settings.Settings, call app.run; no other logic here.
2. Every option has an environment variable HEALTHZ_<PARAMETER> (auto_envvar_prefix).
   HEALTHZ_CMD holds one command per line (commands contain spaces); the other multiple
   options (HEALTHZ_URL, HEALTHZ_PROBE) are whitespace separated.
3. Go flag spellings work: -cmd=..., -cmd ..., --cmd=..., -quiet, -quiet=true/false.
4. A bad flag exits 2 with one line on stderr naming it: "healthz: error: ...".
"""

from __future__ import annotations

import sys
from typing import Any

import click
import prometheus_client

from healthz import app
from healthz import settings as settings_

# Go strconv.ParseBool spellings for "-quiet=VALUE".
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_BOOL_FLAGS = ("quiet", "output")


class Duration(click.ParamType):
    """A Go duration (2s, 500ms, 1m30s) or plain seconds -> float seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return settings_.parse_duration(str(value))
        except settings_.SpecError as exc:
            self.fail(str(exc), param, ctx)


class Command(click.ParamType):
    """A shell command; in the environment variable, one command per line."""

    name = "command"
    envvar_list_splitter = "\n"

    def split_envvar_value(self, rv: str) -> list[str]:
        return [line.strip() for line in (rv or "").splitlines() if line.strip()]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail("empty command", param, ctx)
        return text


class GoFlagCommand(click.Command):
    """A click command that also accepts Go's -flag=true/false for boolean flags."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known: dict[str, bool] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                for opt in (*param.opts, *param.secondary_opts):
                    known[opt] = not (param.is_flag or param.count)
        fixed = []
        takes_value = False
        for arg in args:
            if takes_value:
                fixed.append(arg)
                takes_value = False
                continue
            dashes = "--" if arg.startswith("--") else "-" if arg.startswith("-") else ""
            name, eq, value = arg[len(dashes):].partition("=")
            if dashes and arg != "--" and dashes + name not in known:
                raise click.NoSuchOption(dashes + name, ctx=ctx)
            takes_value = bool(dashes) and not eq and known.get(dashes + name, False)
            if dashes and eq and name in _BOOL_FLAGS:
                if value in _GO_TRUE:
                    arg = f"--{name}"
                elif value in _GO_FALSE:
                    arg = f"--no-{name}"
                else:
                    raise click.BadParameter(f"{value!r} is not a boolean (true/false)",
                                             ctx=ctx, param_hint=f"'-{name}'")
            fixed.append(arg)
        return super().parse_args(ctx, fixed)


def build(cmd: tuple[str, ...], url: tuple[str, ...], probe: tuple[str, ...], probe_timeout: float,
          cmd_timeout: float, **fields: Any) -> settings_.Settings:
    """Validated Settings from the parsed options; raises click.UsageError."""
    if url and len(url) != len(cmd):
        raise click.UsageError(f"-url given {len(url)} times but -cmd {len(cmd)} times: "
                               "give one -url per -cmd, or none (then /healthz serves all)")
    for path in url:
        if not path.startswith("/") or path.rstrip("/") in ("/metrics", ""):
            raise click.UsageError(f"bad -url {path!r}: must start with '/' and not be / or /metrics")
    if probe_timeout <= 0:
        raise click.UsageError("--probe-timeout must be > 0")
    probes = []
    for spec in probe:
        try:
            probes.append(settings_.parse_probe(spec, default_timeout=probe_timeout))
        except settings_.SpecError as exc:
            raise click.BadParameter(str(exc), param_hint="'--probe'") from None
    commands = []
    for index, command in enumerate(cmd):
        name = "cmd" if len(cmd) == 1 else f"cmd{index + 1}"
        path = url[index].rstrip("/") if url else settings_.DEFAULT_URL
        commands.append(settings_.CommandProbe(name=name, command=command, url=path, timeout=cmd_timeout))
    if not probes and not commands:
        raise click.UsageError("nothing to check: give --probe NAME=QNAME[/TYPE]@SERVER[:PORT] or -cmd COMMAND")
    names = [check.name for check in (*probes, *commands)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise click.UsageError(f"check names must be unique: {', '.join(duplicates)} given twice")
    if fields["period"] <= 0:
        raise click.UsageError("-period must be > 0")
    if fields["latency"] <= 0:
        raise click.UsageError("-latency must be > 0")
    if fields["failure_threshold"] < 1:
        raise click.UsageError("--failure-threshold must be >= 1")
    return settings_.Settings(probes=tuple(probes), commands=tuple(commands), **fields)


_DEFAULTS = settings_.Settings()


@click.command(
    "healthz", cls=GoFlagCommand,
    context_settings={"auto_envvar_prefix": "HEALTHZ", "help_option_names": ["-h", "-help", "--help"],
                      "max_content_width": 110},
    help="Probe a DNS server (native DNS probes or exechealthz-style shell commands) on a "
         "period and serve the last verdict on GET /healthz (200 ok / 503 with the reason).",
)
@click.option("-probe", "--probe", "probe", multiple=True, show_envvar=True,
              metavar="NAME=QNAME[/TYPE]@SERVER[:PORT][,OPT...]",
              help="A native DNS probe; repeatable. Options: timeout=DURATION, expect=ADDR[+ADDR], "
                   "rcode=NAME, min-answers=N, tcp. Healthy: rcode NOERROR and >= 1 answer.")
@click.option("-cmd", "--cmd", "cmd", multiple=True, type=Command(), show_envvar=True,
              help="exechealthz: a command run with `sh -c` every period; exit 0 is healthy. Repeatable, "
                   "paired in order with -url.")
@click.option("-url", "--url", "url", multiple=True, show_envvar=True,
              help="exechealthz: the path serving the -cmd at the same position (default: /healthz "
                   "serves every check).")
@click.option("-port", "--port", "port", type=click.IntRange(0, 65535), default=_DEFAULTS.port,
              show_default=True, show_envvar=True, help="HTTP port.")
@click.option("-address", "--address", "address", default=_DEFAULTS.address, show_default=True,
              show_envvar=True, help="HTTP listen address.")
@click.option("-period", "--period", "period", type=Duration(), default="2s", show_default=True,
              show_envvar=True, help="How often every check runs.")
@click.option("-latency", "--latency", "latency", type=Duration(), default="30s", show_default=True,
              show_envvar=True, help="A result older than this is a failure; also the start-up grace.")
@click.option("-probe-timeout", "--probe-timeout", "probe_timeout", type=Duration(), default="2s",
              show_default=True, show_envvar=True, help="Timeout of a DNS probe without timeout=.")
@click.option("-cmd-timeout", "--cmd-timeout", "cmd_timeout", type=Duration(), default="0s",
              show_default=True, show_envvar=True, help="Kill a -cmd after this long; 0 means -latency.")
@click.option("-failure-threshold", "--failure-threshold", "failure_threshold", type=int,
              default=_DEFAULTS.failure_threshold, show_default=True, show_envvar=True,
              help="Consecutive failed runs before a check is unhealthy (1 = exechealthz).")
@click.option("--pending-ok/--pending-fail", "pending_ok", default=_DEFAULTS.pending_ok, show_default=True,
              show_envvar=True, help="Before the first result (within -latency of start): 200 "
                                     "'ok (no result yet, starting)' or 503.")
@click.option("-quiet", "--quiet/--no-quiet", "quiet", default=_DEFAULTS.quiet, show_default=True,
              show_envvar=True, help="Log only warnings and errors.")
@click.option("-output", "--output/--no-output", "output", default=_DEFAULTS.output, show_default=True,
              show_envvar=True, help="exechealthz: answer the command's output instead of 'ok'.")
@click.version_option(None, "-version", "--version", package_name="kube-skydns", prog_name="healthz")
def command(**options: Any) -> int:
    """The healthz command (see help above)."""
    settings = build(**options)
    return app.run(settings)


def main(argv: list[str] | None = None) -> None:
    """Console script entry: exit 2 with one line on a bad flag."""
    prometheus_client.disable_created_metrics()  # one rule in the three daemons: no *_created series
    try:
        code = command.main(args=argv, prog_name="healthz", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        print(f"healthz: error: {exc.format_message()}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        print(f"healthz: error: {exc.format_message()}".replace("\n", " "), file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
