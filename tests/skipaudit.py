"""The skip audit: a run that skips a test for a reason nobody allowed fails.

Rules:

1. Every skip is recorded with its reason: ``pytest.skip``, ``skipif`` marks, module-level skips
   at collection, and expected failures (``xfail``, reason prefixed with ``xfail: ``).
2. A reason is allowed when one of the allow-list's regular expressions matches it
   (``re.search``). The allow-list is ``ALLOWED_SKIPS`` in ``tests/conftest.py``, plus the
   expressions in the environment variable ``KUBE_SKYDNS_ALLOW_SKIPS`` (one per line) for a
   machine that cannot run everything; CI sets none.
3. The audit is a test of its own, ``skip-audit``, appended after every selected test: it fails
   and lists each unexpected skip (test id and reason). A run that selects no test gets none.
"""

from __future__ import annotations

import os
import re

import pytest

ENV = "KUBE_SKYDNS_ALLOW_SKIPS"
NAME = "skip-audit"


def reason_of(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (without pytest's ``Skipped: `` prefix)."""
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail}"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


class AuditItem(pytest.Item):
    """The test that fails when an unexpected skip was recorded."""

    def __init__(self, *, audit: "SkipAudit", **kwargs) -> None:
        super().__init__(**kwargs)
        self.audit = audit

    def runtest(self) -> None:
        if self.audit.unexpected:
            lines = [f"  {nodeid}: {reason}" for nodeid, reason in self.audit.unexpected]
            raise AssertionError(
                f"{len(lines)} unexpected skip(s): a skip hides a test, so install what it needs "
                "(scripts/install-deps.sh) or fix it; only the reasons in ALLOWED_SKIPS "
                f"(tests/conftest.py) or ${ENV} may skip:\n" + "\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, None, f"{NAME}: every skip has an allowed reason"


class SkipAudit:
    """The pytest plugin: records skips, appends the audit test."""

    def __init__(self, allowed: dict[str, str], env: str | None = None) -> None:
        patterns = list(allowed)
        patterns += [line.strip() for line in (env or "").splitlines() if line.strip()]
        self.allowed = [re.compile(p) for p in patterns]
        self.unexpected: list[tuple[str, str]] = []  # (test id, reason)

    def allows(self, reason: str) -> bool:
        return any(p.search(reason) for p in self.allowed)

    def _record(self, report) -> None:
        if report.skipped:
            reason = reason_of(report)
            if not self.allows(reason):
                self.unexpected.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)  # after -k/-m deselection, so the audit is never deselected
    def pytest_collection_modifyitems(self, session: pytest.Session, config, items: list) -> None:
        if items or self.unexpected:
            items.append(AuditItem.from_parent(session, name=NAME, audit=self))


def register(config: pytest.Config, allowed: dict[str, str]) -> SkipAudit:
    """Install the audit with this allow-list ({regular expression: why it may skip})."""
    audit = SkipAudit(allowed, os.environ.get(ENV))
    config.pluginmanager.register(audit, "kube-skydns-skip-audit")
    return audit
