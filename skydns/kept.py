"""Memos of the answer path bounded by the records their entries hold.

Rules:
1. An entry is kept with the number of records it holds (``keep``); when the total would pass
   the bound, every entry is dropped first: the memo empties at once and never walks its
   entries to choose one (a cluster's churn only ever refills it).
2. An entry replaced by a patched copy of the same size (``memo[key] = entry``) is not counted
   again; ``clear()`` forgets the count too.
3. It is a dict: lookups are the dict's own (the answer path reads these on every miss).
4. The answer path's ``functools`` memos (each entry computed from one name or one value alone)
   are bounded by ``NAMES`` or ``VALUES`` entries, so that all of them together hold about
   10 MiB whatever is asked: an entry keyed by a name can take about 1.2 KB (the suffix keys of
   a long name), one keyed by a value (an address, a host) about 150 bytes. At 10,000
   services and 100,000 endpoints, with every name asked once, memos of 65,536 entries held
   160 MiB between them (issue 12: skydns <= 100 MiB).
"""

from __future__ import annotations

# Most entries of a memo keyed by a name, and of one keyed by a value (rule 4).
NAMES = 1 << 11
VALUES = 1 << 12


class Kept(dict):
    """A dict of entries holding at most ``most`` records between them (rule 1)."""

    __slots__ = ("most", "records")

    def __init__(self, most: int) -> None:
        super().__init__()
        self.most = most
        self.records = 0

    def keep(self, key, entry, records: int) -> None:
        """Keep ``entry`` (holding ``records`` records) under ``key``, emptying the memo first
        when it would hold more than its bound."""
        if self.records + records > self.most:
            self.clear()
        self.records += records
        self[key] = entry

    def clear(self) -> None:
        super().clear()
        self.records = 0
