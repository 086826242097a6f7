"""One duration grammar in the three daemons: skydns, kube2sky and healthz each parse time flags
with their own copy of the same function (the import contracts keep the packages apart); this
table holds the copies equal. Go/CoreDNS durations and plain seconds both work."""

from __future__ import annotations

import pytest

from healthz import settings as healthz_settings
from kube2sky import settings as kube2sky_settings
from skydns import settings as skydns_settings

PARSERS = {
    "skydns": skydns_settings.parse_duration,
    "kube2sky": kube2sky_settings.parse_duration,
    "healthz": healthz_settings.parse_duration,
}

GOOD = {
    "5s": 5.0, "500ms": 0.5, "1m": 60.0, "1m30s": 90.0, "1.5h": 5400.0, "2h45m": 9900.0,
    "300us": 0.0003, "300µs": 0.0003, "10ns": 1e-8, "1h2m3s4ms": 3723.004, ".5s": 0.5,
    "5": 5.0, "0.25": 0.25, "0": 0.0, "0s": 0.0, " 10s ": 10.0,
}
BAD = ["", "2x", "s", "-1s", "-1", "1s2", "2 s", "nan", "inf", "1d", "5S", "1m-5s"]


@pytest.mark.parametrize("daemon", PARSERS)
@pytest.mark.parametrize(("text", "seconds"), GOOD.items(), ids=GOOD.keys())
def test_duration(daemon: str, text: str, seconds: float) -> None:
    assert PARSERS[daemon](text) == pytest.approx(seconds)


@pytest.mark.parametrize("daemon", PARSERS)
@pytest.mark.parametrize("text", BAD)
def test_bad_duration_is_a_value_error_naming_the_text(daemon: str, text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        PARSERS[daemon](text)
