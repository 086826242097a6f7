"""rrs: TXT text is split in 255-byte strings and never exceeds what one rdata can hold."""

from __future__ import annotations

import pytest

from skydns import rrs

TEXTS = [
    # (id, text, strings, last string length)
    ("empty", "", 1, 0),
    ("short", "hello", 1, 5),
    ("exactly 255", "a" * 255, 1, 255),
    ("256 bytes", "a" * 256, 2, 1),
    ("at the limit", "a" * rrs.TXT_MAX, 255, 255),
    ("1 MB is cut at the limit", "a" * (1 << 20), 255, 255),
]


@pytest.mark.parametrize(("text", "strings", "last"), [r[1:] for r in TEXTS], ids=[r[0] for r in TEXTS])
def test_txt_strings_and_limit(text, strings, last):
    rdata = rrs.txt(text)
    assert len(rdata.strings) == strings and len(rdata.strings[-1]) == last
    # the rdata is encodable: a TXT rdata holds at most 65535 bytes
    assert len(rdata.to_wire()) <= 65535
