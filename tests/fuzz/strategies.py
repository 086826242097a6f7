"""Hypothesis strategies and profiles for the fuzz tests (issue 11).

Profiles (``settings.load_profile``), picked with the FUZZ_PROFILE environment variable:

- ``ci`` (default, what ``make test`` runs): a few hundred examples in a fixed order
  (derandomized, no example database), so a run never fails by luck and takes seconds.
- ``fuzz`` (``make fuzz``): random search with FUZZ_EXAMPLES examples per property
  (default 20000), for long runs.
"""

from __future__ import annotations

import json
import math
import os

from hypothesis import HealthCheck, settings, strategies as st

settings.register_profile(
    "ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), derandomize=True, database=None,
    deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), deadline=None,
    suppress_health_check=list(HealthCheck), print_blob=True)
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """Examples for one property: ``ci`` in make test (unless FUZZ_EXAMPLES says otherwise), the
    profile's number under ``make fuzz``."""
    if PROFILE == "ci" and "FUZZ_EXAMPLES" not in os.environ:
        return ci
    return settings.default.max_examples

ZONE = "cluster.local."
PREFIX = "/skydns/"

# -- JSON of any shape ----------------------------------------------------------------------------

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e400, -1e400, math.nan, 1e300, 30.0, 30.5, -0.0, 65535.0, 65536.0, 4294967296.0]),
)
INTS = st.one_of(
    st.integers(min_value=-2, max_value=70000),
    st.integers(),
    st.sampled_from([0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**32 - 1, 2**32, 10**100, -(10**50)]),
)
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "caf\u00e9", "\U0001f600", "x" * 70000]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

# -- record-shaped values -------------------------------------------------------------------------

LABELS = st.sampled_from(["a", "b", "web", "db", "db-0", "svc", "default", "_tcp", "_http", "_udp", "*", "any",
                          "ns", "dns", "apex", "pod", "10-0-0-1", "fd00--1", "x" * 63])
IN_ZONE_NAMES = st.lists(LABELS, min_size=0, max_size=4).map(lambda labels: ".".join([*labels, "cluster.local."]))
HOSTS = st.one_of(
    st.sampled_from(["10.0.0.1", "10.0.0.2", "192.0.2.1", "0.0.0.0", "255.255.255.255", "fd00::1", "::1", "::",
                     "::ffff:10.0.0.1", "fe80::1%eth0", "fe80::1%1", "10.0.0.1%eth0", "1.2.3", "01.2.3.4",
                     "300.1.1.1", "1.2.3.4.", "target.example.org.", "target.example.org", "a..b", ".", "..",
                     "", " ", "a b", "café.example.", "xn--caf-dma.example.", "a\\.b.", "@", "*", "*.cluster.local.",
                     "_http._tcp.web.default.svc.cluster.local.", "-a-.example.", "UPPER.Example.ORG.",
                     ".".join(["a" * 63] * 4), "a" * 64 + ".example.", "in-addr.arpa.", "1.0.0.10.in-addr.arpa."]),
    IN_ZONE_NAMES,
    TEXT,
)
FIELD_VALUES = {
    "host": HOSTS,
    "port": st.one_of(INTS, FLOATS, TEXT, st.booleans(), st.none()),
    "priority": st.one_of(INTS, FLOATS, st.none()),
    "weight": st.one_of(INTS, FLOATS, st.none()),
    "ttl": st.one_of(INTS, FLOATS, st.none(), TEXT),
    "targetstrip": st.one_of(INTS, FLOATS, st.none()),
    "text": st.one_of(TEXT, st.none(), INTS),
    "mail": st.one_of(st.booleans(), st.none(), INTS, TEXT),
    "group": st.one_of(st.sampled_from(["", "g1", "g2"]), TEXT, st.none()),
}
RECORD = st.one_of(
    st.fixed_dictionaries({"host": HOSTS}, optional={k: v for k, v in FIELD_VALUES.items() if k != "host"}),
    st.fixed_dictionaries({}, optional={**FIELD_VALUES, "extra": JSON, "Host": TEXT}),
)


# The reproducers of issue 11 and their kin: always among the examples (hypothesis.example).
KNOWN_BAD = (
    b'{"host":"10.0.0.1","ttl":1e400}', b'{"host":"10.0.0.1","port":NaN}', b'{"host":"10.0.0.1","weight":Infinity}',
    b'{"host":"10.0.0.1","priority":' + b"9" * 400 + b"}", b'{"host":"fe80::1%eth0"}',
    b'{"host":"web.default.svc.cluster.local.","port":1e400}', b'{"host":"a..b."}', b'{"text":"\\ud800"}',
    b'{"host":"' + b"a" * 300 + b'"}', b"[" * 100000, b"\xff\xfe", b'{"host":"10.0.0.1%eth0"}',
)


def _dump(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


VALUES = st.one_of(
    RECORD.map(_dump),
    RECORD.map(_dump),
    RECORD.map(_dump),
    JSON.map(_dump),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"[" * 5000, b'{"host":"\xff"}', b"\xef\xbb\xbf{}", b"null", b"{}" * 3]),
)

# -- keys -----------------------------------------------------------------------------------------

SEGMENTS = st.one_of(LABELS, st.sampled_from(["A", "Web", "", "a b", "x" * 70, "é", "\ufffd", ".", "a.b"]))
ZONE_KEYS = st.lists(SEGMENTS, min_size=0, max_size=4).map(lambda segs: "/skydns/local/cluster/" + "/".join(segs))
REVERSE_KEYS = st.tuples(st.integers(0, 255), st.integers(0, 3), st.sampled_from(["", "/leaf", "/_x/y"])).map(
    lambda t: f"/skydns/arpa/in-addr/10/0/{t[1]}/{t[0]}{t[2]}")
KEYS = st.one_of(ZONE_KEYS, ZONE_KEYS, REVERSE_KEYS, st.sampled_from(["/skydns", "/skydns/", "/other/x", "/skydns//"]))
STORES = st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=6)
