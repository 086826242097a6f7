"""Round trips of the record contract (skydns/msg.py)."""

from __future__ import annotations

import pytest

from skydns import msg

KEY_CASES = [
    ("web.default.svc.cluster.local.", "skydns", "/skydns/local/cluster/svc/default/web"),
    ("web.default.svc.cluster.local", "skydns", "/skydns/local/cluster/svc/default/web"),
    ("Web.Default.SVC.Cluster.Local.", "skydns", "/skydns/local/cluster/svc/default/web"),
    ("service.staging.skydns.local.", "skydns", "/skydns/local/skydns/staging/service"),
    ("a.example.", "/custom/", "/custom/example/a"),
    ("a.example.", "deep/prefix", "/deep/prefix/example/a"),
]


@pytest.mark.parametrize(("name", "prefix", "key"), KEY_CASES, ids=[c[0] + "|" + c[1] for c in KEY_CASES])
def test_name_key_round_trip(name, prefix, key):
    assert msg.name_to_key(name, prefix) == key
    assert msg.key_to_name(key, prefix) == msg.normalize(name)
    assert msg.key_to_name(key + "/", prefix) == msg.normalize(name)


def test_key_outside_prefix_is_an_error():
    with pytest.raises(msg.PathError):
        msg.key_to_name("/other/local/cluster", "skydns")


def test_empty_label_is_an_error():
    with pytest.raises(msg.PathError):
        msg.name_to_key("a..b.")


ENCODE_CASES = [
    (msg.Service(host="10.0.0.10", priority=10, weight=10, ttl=30),
     '{"host":"10.0.0.10","priority":10,"weight":10,"ttl":30}'),
    (msg.Service(host="web.default.svc.cluster.local.", port=80, priority=10, weight=10, ttl=30),
     '{"host":"web.default.svc.cluster.local.","port":80,"priority":10,"weight":10,"ttl":30}'),
    (msg.Service(text="1.1.0", ttl=28800), '{"text":"1.1.0","ttl":28800}'),
    (msg.Service(host="mx.example.", mail=True, priority=5), '{"host":"mx.example.","priority":5,"mail":true}'),
    (msg.Service(host="a.b.", targetstrip=1, group="g1"), '{"host":"a.b.","targetstrip":1,"group":"g1"}'),
    (msg.Service(), "{}"),
]


@pytest.mark.parametrize(("record", "text"), ENCODE_CASES, ids=[c[1] for c in ENCODE_CASES])
def test_encode_decode_round_trip(record, text):
    assert msg.encode(record) == text
    assert msg.decode(text) == record
    assert msg.decode(text.encode()) == record


def test_decode_ignores_unknown_fields_and_keeps_key():
    # JSON written by old SkyDNS tooling, with extra fields.
    rec = msg.decode('{"host":"10.0.0.1","port":53,"Key":"/x","dnssec":true,"ttl":60}', key="/skydns/x")
    assert rec == msg.Service(host="10.0.0.1", port=53, ttl=60)
    assert rec.key == "/skydns/x"


BAD_VALUES = [
    "not json",
    "[1,2]",
    '"string"',
    '{"host":1}',
    '{"port":"80"}',
    '{"port":70000}',
    '{"ttl":-1}',
    '{"mail":"yes"}',
    '{"priority":1.5}',
    b"\xff\xfe",
    # issue 11: numbers no record can hold, hosts no answer can carry, strings that are not text
    '{"host":"10.0.0.1","ttl":1e400}',
    '{"ttl":NaN}',
    '{"port":Infinity}',
    '{"weight":-Infinity}',
    '{"priority":1e300}',
    '{"targetstrip":' + "9" * 5000 + "}",
    '{"port":' + "9" * 100 + "}",
    '{"ttl":4294967296}',
    '{"ttl":true}',
    '{"host":"fe80::1%eth0"}',
    '{"host":"10.0.0.1%eth0"}',
    '{"host":"a..example."}',
    '{"host":".example."}',
    '{"host":"."}',
    '{"host":"a b.example."}',
    '{"host":"a\\.b.example."}',
    '{"host":"caf\\u00e9.example."}',
    '{"host":"' + "a" * 64 + '.example."}',
    '{"host":"' + ".".join(["a" * 63] * 4) + '"}',
    '{"host":"\\ud800.example."}',
    '{"text":"\\udfff"}',
    '{"group":"\\ud83d"}',
    '{"host":["10.0.0.1"]}',
    '{"mail":1}',
    "[" * 100000 + "]" * 100000,
    '{"host":"10.0.0.1"} trailing',
    b'\xef\xbb\xbf{"host":"10.0.0.1"}',
    "",
    "null",
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=[repr(v)[:40] for v in BAD_VALUES])
def test_decode_bad_values_raise_record_error(value):
    with pytest.raises(msg.RecordError) as info:
        msg.decode(value, key="/skydns/bad")
    assert str(info.value).startswith("/skydns/bad: ")
    assert len(str(info.value)) < 200  # a huge value never makes a huge log line


GOOD_VALUES = [
    # what kube2sky writes, and SkyDNS-era hand-written values
    ('{"host":"10.0.0.10","priority":10,"weight":10,"ttl":30}', msg.Service(host="10.0.0.10", priority=10,
                                                                          weight=10, ttl=30)),
    ('{"host":"fd00::1","ttl":30}', msg.Service(host="fd00::1", ttl=30)),
    ('{"host":"web.default.svc.cluster.local.","port":80,"priority":10,"weight":10,"ttl":30}',
     msg.Service(host="web.default.svc.cluster.local.", port=80, priority=10, weight=10, ttl=30)),
    ('{"host":"_http._tcp.Web-1.example"}', msg.Service(host="_http._tcp.Web-1.example")),
    ('{"host":"*.example."}', msg.Service(host="*.example.")),
    ('{"host":"1.2.3.4.nip.io"}', msg.Service(host="1.2.3.4.nip.io")),
    ('{"host":"' + ".".join(["a" * 63] * 3) + "." + "a" * 61 + '."}',
     msg.Service(host=".".join(["a" * 63] * 3) + "." + "a" * 61 + ".")),
    ('{"ttl":30.0,"port":53.0}', msg.Service(ttl=30, port=53)),
    ('{"ttl":4294967295,"port":65535,"targetstrip":255}', msg.Service(ttl=4294967295, port=65535, targetstrip=255)),
    ('{"text":"' + "x" * 100000 + '"}', msg.Service(text="x" * 100000)),
    ('{"text":"caf\\u00e9 \\ud83d\\ude00"}', msg.Service(text="café 😀")),
    ('{"host":null,"port":null,"Host":"ignored","extra":{"deep":[1,2,NaN]}}', None),
]


@pytest.mark.parametrize(("value", "record"), GOOD_VALUES, ids=[v[:40] for v, _ in GOOD_VALUES])
def test_decode_good_values(value, record):
    if record is None:  # NaN in an ignored field is still refused while parsing: not a valid value
        with pytest.raises(msg.RecordError):
            msg.decode(value)
        return
    assert msg.decode(value) == record
    assert msg.decode(value.encode()) == record


LEAF_CASES = [
    ('{"host":"10.0.0.10","priority":10,"weight":10,"ttl":30}', "5f106532"),
    ('{"host":"10.0.0.1","priority":10,"weight":10,"ttl":30}', "f488b1a2"),
    # Go's %x has no zero padding: a hash below 0x10000000 has fewer than 8 digits (0x00fd6175).
    ('{"host":"10.0.0.88","priority":10,"weight":10,"ttl":30}', "fd6175"),
    ('{"host":"10-1-0-2.db.default.svc.cluster.local.","port":5432,"priority":10,"weight":10,"ttl":30}', "8510ea4"),
]


@pytest.mark.parametrize(("value", "label"), LEAF_CASES, ids=[c[1] for c in LEAF_CASES])
def test_leaf_label_matches_kube2sky(value, label):
    assert msg.leaf_label(value) == label


HOST_TYPES = [
    ("", msg.HostType.NONE),
    ("10.0.0.1", msg.HostType.IPV4),
    ("fd00::1", msg.HostType.IPV6),
    ("::ffff:10.0.0.1", msg.HostType.IPV6),
    ("web.default.svc.cluster.local.", msg.HostType.NAME),
    ("1.2.3.4.nip.io", msg.HostType.NAME),
    ("300.1.1.1", msg.HostType.NAME),
    ("fe80::1%eth0", msg.HostType.NAME),  # a zone id: no AAAA can hold it (decode refuses it)
    ("10.0.0.1.", msg.HostType.NAME),
]


@pytest.mark.parametrize(("host", "kind"), HOST_TYPES, ids=[c[0] or "empty" for c in HOST_TYPES])
def test_host_type(host, kind):
    assert msg.host_type(host) is kind


REVERSE_CASES = [
    ("10.0.0.1", "1.0.0.10.in-addr.arpa.", "/skydns/arpa/in-addr/10/0/0/1"),
    ("fd00::1", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
     "/skydns/arpa/ip6/f/d/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/1"),
]


@pytest.mark.parametrize(("ip", "name", "key"), REVERSE_CASES, ids=[c[0] for c in REVERSE_CASES])
def test_reverse_round_trip(ip, name, key):
    assert msg.ip_to_reverse_name(ip) == name
    assert msg.reverse_name_to_ip(name) == ip
    assert msg.ip_to_reverse_key(ip) == key
    assert msg.reverse_key_to_ip(key + "/abc123") == ip
    assert msg.is_reverse(name)


@pytest.mark.parametrize("name", ["0.10.in-addr.arpa.", "300.0.0.10.in-addr.arpa.", "x.ip6.arpa.", "example.com."])
def test_partial_or_bad_reverse_names_have_no_ip(name):
    assert msg.reverse_name_to_ip(name) is None


WILDCARD_CASES = [
    ("*.east.skydns.local.", "/skydns/local/skydns/east", ("local", "skydns", "east", "*")),
    ("a.any.skydns.local.", "/skydns/local/skydns", ("local", "skydns", "any", "a")),
    ("a.b.skydns.local.", "/skydns/local/skydns/b/a", ()),
]


@pytest.mark.parametrize(("name", "key", "pattern"), WILDCARD_CASES, ids=[c[0] for c in WILDCARD_CASES])
def test_key_for_lookup(name, key, pattern):
    assert msg.key_for_lookup(name) == (key, pattern)


def test_wildcard_matches_one_label_anywhere():
    pattern = ("local", "skydns", "*", "web")
    assert msg.matches(("local", "skydns", "east", "web"), pattern)
    assert msg.matches(("local", "skydns", "east", "web", "leaf1"), pattern)
    assert not msg.matches(("local", "skydns", "east"), pattern)
    assert not msg.matches(("local", "skydns", "east", "db"), pattern)


def test_msg_imports_only_stdlib():
    import ast
    import pathlib
    import sys

    tree = ast.parse(pathlib.Path(msg.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}
