"""What the fuzz targets check, shared by the hypothesis tests (tests/fuzz/test_*.py, in
``make test``) and the atheris harnesses (fuzz/, ``make fuzz``).

Each ``check_*`` raises AssertionError (or the unexpected exception itself) on a finding.
"""

from __future__ import annotations

import asyncio
import logging

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rrset

from skydns import answering, metrics, msg, settings as settings_mod, store, transport, wire

ZONE = "cluster.local."
TYPES = ("A", "AAAA", "CNAME", "SRV", "MX", "TXT", "PTR", "NS", "SOA", "ANY", "CAA", "HINFO")
SETTINGS = (
    settings_mod.Settings(domains=(ZONE,)),
    settings_mod.Settings(domains=(ZONE, "in-addr.arpa."), pods="insecure", max_answers=3,
                          any_minimal=False, no_rec=True),
)


class Errors(logging.Handler):
    """Collects what answering and the transport log at ERROR (an internal exception caught)."""

    LOGGERS = ("skydns.answering", "skydns.transport")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def __enter__(self) -> Errors:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def check(self, what: str) -> None:
        if self.records:
            record = self.records[0]
            self.records.clear()
            raise AssertionError(f"{what}: {record.getMessage()}")


# -- record values ------------------------------------------------------------------------------


def check_decode(value: bytes | str) -> msg.Service | None:
    """msg.decode is total and what it accepts is answerable data (rule 5 of skydns/msg.py)."""
    try:
        record = msg.decode(value, key="/skydns/x")
    except msg.RecordError as exc:
        assert str(exc).startswith("/skydns/x: ")
        assert len(str(exc)) < 400, "a bad value made a huge error text"
        return None
    assert isinstance(record, msg.Service)
    kind = msg.host_type(record.host)
    if kind is msg.HostType.IPV6:
        assert "%" not in record.host
    if kind is msg.HostType.NAME:
        dns.name.from_text(record.host)
    for text in (record.host, record.text, record.group):
        text.encode("utf-8")
    assert msg.decode(msg.encode(record)) == record
    return record


def names_for(key: str, prefix: str) -> list[str]:
    """The name of key, every name above it down to the top label, and a wildcard form."""
    try:
        labels = msg.labels(msg.key_to_name(key, prefix))
    except msg.PathError:
        return []
    out = []
    for start in range(len(labels) - 1):
        tail = labels[start:]
        name = ".".join(tail) + "."
        if len(name) < 250 and all(0 < len(label) < 64 for label in tail):
            out.append(name)
    if len(labels) > 2 and len(out) == len(labels) - 1:
        out.insert(min(3, len(out)), ".".join(["*", *labels[1:]]) + ".")
    return out


def check_answer(view: store.Store, settings: settings_mod.Settings, name: str, rdtype: str,
                 errors: Errors) -> None:
    """One query answered without SERVFAIL or internal error, renderable at every size."""
    try:
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    except dns.exception.DNSException:
        return  # not a name a client can ask
    result = answering.answer(query, view, settings)
    failure = getattr(result, "failure", None)
    if failure is not None:
        raise AssertionError(f"answering {name} {rdtype} failed: {failure!r}") from failure
    errors.check(f"answering {name} {rdtype}")
    messages = []
    if isinstance(result, answering.Reply):
        messages.append(result.message)
    elif isinstance(result, answering.Resolve):
        messages.append(result.message)
        if result.fallback is not None:
            messages.append(result.fallback)
    else:
        assert isinstance(result, answering.Forward), result
    for message in messages:
        assert message.rcode() != dns.rcode.SERVFAIL, f"{name} {rdtype}:\n{message}"
        assert len(transport.render(message, 512)) <= 512
        out = transport.render(message, 65535)
        assert dns.message.from_wire(out).id == query.id


def check_store(items: list[tuple[str, bytes]], settings: settings_mod.Settings, errors: Errors,
                types: tuple[str, ...] = TYPES) -> store.Store:
    """Put every (key, value) into a store; every accepted record answers every type."""
    view = store.Store()
    for revision, (key, value) in enumerate(items, 2):
        view.put(key, value, revision)
    view.loaded = True
    names = {ZONE, "svc." + ZONE, "1.0.0.10.in-addr.arpa."}
    for key in view.records():
        names.update(names_for(key, view.prefix)[:4])  # the name, two above it, its wildcard form
    for name in sorted(names):
        for rdtype in types:
            check_answer(view, settings, name, rdtype, errors)
    return view


# -- packets --------------------------------------------------------------------------------------


RECORDS = {
    "web.default.svc.cluster.local.": '{"host":"10.0.0.1","ttl":30}',
    "/skydns/local/cluster/svc/default/db/db-0/a": '{"host":"10.0.0.2"}',
    "/skydns/local/cluster/svc/default/db/db-1/b": '{"host":"fd00::2"}',
    "/skydns/local/cluster/svc/default/db/_tcp/_pg/c": '{"host":"db-0.db.default.svc.cluster.local.","port":5432}',
    "ext.default.svc.cluster.local.": '{"host":"target.example.org."}',
    "txt.cluster.local.": '{"text":"' + "t" * 700 + '"}',
    "mx.cluster.local.": '{"host":"mail.example.org.","mail":true,"priority":5}',
    "/skydns/arpa/in-addr/10/0/0/1/x": '{"host":"web.default.svc.cluster.local."}',
    **{f"/skydns/local/cluster/many/{i}": f'{{"host":"10.1.0.{i}"}}' for i in range(1, 80)},
}
NAMES = ["web.default.svc.cluster.local.", "db.default.svc.cluster.local.", "_pg._tcp.db.default.svc.cluster.local.",
         "ext.default.svc.cluster.local.", "txt.cluster.local.", "mx.cluster.local.", "many.cluster.local.",
         "cluster.local.", "nope.cluster.local.", "*.default.svc.cluster.local.", "www.example.org.",
         "1.0.0.10.in-addr.arpa.", "version.bind."]


class Forwarder:
    """Answers every forwarded query from memory (no sockets): a fixed A, else SERVFAIL."""

    async def forward(self, query: dns.message.Message, proto: str = "udp") -> dns.message.Message:
        reply = dns.message.make_response(query)
        if query.question and query.question[0].rdtype == 1:
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        else:
            reply.set_rcode(dns.rcode.SERVFAIL)
        return reply

    async def lookup(self, name, rdtype):
        return [dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1")] if rdtype == 1 else []


def make_handler(cache_size: int) -> transport.Handler:
    view = store.Store.from_records(RECORDS)
    settings = settings_mod.Settings(domains=(ZONE,))
    return transport.Handler(settings, view, Forwarder(), stats=metrics.DnsStats(), cache_size=cache_size)


def check_packet(handler: transport.Handler, data: bytes, proto: str, loop: asyncio.AbstractEventLoop,
                 errors: Errors) -> None:
    """handle() never panics; it drops (None) or answers with the query's ID, QR set, readable."""
    before = handler.stats.panics
    for _ in range(2):  # the second time may come from the caches
        out = handler.handle(data, proto)
        if out is not None and not isinstance(out, bytes):
            out = loop.run_until_complete(out)
        assert handler.stats.panics == before, f"panic on {data!r}"
        errors.check(f"packet {data!r}")
        if len(data) < wire.HEADER_SIZE or data[2] & 0x80:
            assert out is None
            continue
        assert out is not None and len(out) >= wire.HEADER_SIZE, data
        assert out[:2] == data[:2] and out[2] & 0x80
        assert len(out) <= 65535
        dns.message.from_wire(out, ignore_trailing=True)
