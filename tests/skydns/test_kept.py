"""skydns.kept: memos bounded by the records their entries hold (its rules 1-2)."""

from skydns import kept


def test_entries_are_kept_until_the_bound_then_all_dropped_at_once():
    memo = kept.Kept(10)
    memo.keep("a", 1, 4)
    memo.keep("b", 2, 6)
    assert dict(memo) == {"a": 1, "b": 2} and memo.records == 10
    memo.keep("c", 3, 1)  # would hold 11: everything else goes first
    assert dict(memo) == {"c": 3} and memo.records == 1


def test_a_patched_entry_is_not_counted_again_and_clear_forgets_the_count():
    memo = kept.Kept(10)
    memo.keep("a", 1, 8)
    memo["a"] = 2  # a patched copy of the same size (rule 2)
    assert memo.records == 8 and memo.get("a") == 2
    memo.clear()
    assert not memo and memo.records == 0
    memo.keep("b", 3, 10)
    assert dict(memo) == {"b": 3}
