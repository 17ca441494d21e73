"""Filters (incl. fixpoint), splits and augmentation on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.data.augment import make_examples
from intentrec.data.filters import filter_sessions
from intentrec.data.sessions import Sessions
from intentrec.data.splits import split_order, split_sizes


def _sessions(lists, ends=None) -> Sessions:
    vocab = np.array(sorted({i for s in lists for i in s}), dtype=object)
    code = {v: i for i, v in enumerate(vocab)}
    values = np.array([code[i] for s in lists for i in s], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    times = np.full(len(values), np.nan) if ends is None else np.repeat(np.array(ends, float), np.diff(offsets))
    ids = np.array([f"s{i}" for i in range(len(lists))], dtype=object)
    return Sessions(values, times, offsets, ids, vocab)


def _lists(sessions):
    items = sessions.item_vocab[sessions.values]
    return [list(items[a:b]) for a, b in zip(sessions.offsets[:-1], sessions.offsets[1:], strict=True)]


CASE = [["A", "B", "C"], ["A", "B"], ["C", "D"], ["A"]]  # supports: A 3, B 2, C 2, D 1


def test_one_pass_drops_rare_items_then_short_sessions():
    out, report = filter_sessions(_sessions(CASE), min_item_support=2, min_session_length=2)
    # D goes → s2 = [C] (too short); s3 = [A] too short. C now has one click but one pass keeps it.
    assert _lists(out) == [["A", "B", "C"], ["A", "B"]]
    assert list(out.session_ids) == ["s0", "s1"]
    assert report.passes_run == 1 and report.sessions_before == 4 and report.interactions_after == 5


def test_fixpoint_repeats_until_stable():
    out, report = filter_sessions(_sessions(CASE), min_item_support=2, min_session_length=2, passes="fixpoint")
    assert _lists(out) == [["A", "B"], ["A", "B"]]
    assert report.passes_run == 3  # pass 2 drops C, pass 3 changes nothing


def test_drop_whole_sessions_holding_a_rare_item():
    data = [["A", "B", "C"], ["A", "B", "D"], ["C", "A"], ["B"]]  # D is rare
    out, _ = filter_sessions(_sessions(data), min_item_support=2, min_session_length=2, rare_items="drop-sessions")
    assert _lists(out) == [["A", "B", "C"], ["C", "A"]]


def test_drop_short_sessions_first_changes_support():
    data = [["A", "B", "B"], ["A"]]
    plain, _ = filter_sessions(_sessions(data), min_item_support=2, min_session_length=2)
    first, _ = filter_sessions(
        _sessions(data), min_item_support=2, min_session_length=2, drop_short_sessions_first=True
    )
    assert _lists(plain) == [["A", "B", "B"]]
    assert _lists(first) == [["B", "B"]]  # [A] went first, so A had one click left


def test_order_split_sizes_follow_int_of_fraction():
    s = split_sizes(22_363, test_fraction=0.1, valid_fraction=0.0)
    assert (s.train, s.valid, s.test) == (20_126, 0, 2_237)
    sizes = split_sizes(22_363, test_fraction=0.1, valid_fraction=0.1)
    assert (sizes.train, sizes.valid, sizes.test) == (18_114, 2_012, 2_237)
    assert list(split_sizes(10, test_fraction=0.2, valid_fraction=0.25).labels()) == (
        ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    )


def test_time_split_orders_by_session_end_and_test_days():
    sessions = _sessions([["A"], ["B"], ["C"], ["D"]], ends=[40, 10, 30, 20])
    order = split_order(sessions, "time")
    assert order.tolist() == [1, 3, 2, 0]
    ends = sessions.end_times()[order]
    sizes = split_sizes(4, test_fraction=0.1, valid_fraction=0.0, end_times=ends, test_days=15 / 86_400)
    assert sizes.test == 2  # ends 30 and 40 are within 15 s of the latest end (40)


def test_random_split_is_seeded_permutation():
    sessions = _sessions([[str(i)] for i in range(50)])
    a, b = split_order(sessions, "random", seed=3), split_order(sessions, "random", seed=3)
    assert a.tolist() == b.tolist() and sorted(a.tolist()) == list(range(50))
    assert a.tolist() != split_order(sessions, "random", seed=4).tolist()
    assert split_order(sessions, "order").tolist() == list(range(50))


def test_time_split_without_times_is_an_error():
    from intentrec.errors import DataError

    with pytest.raises(DataError, match="needs interaction times"):
        split_order(_sessions([["A"]]), "time")


def test_prefix_and_last_augmentation():
    values = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    offsets = np.array([0, 3, 4, 6], dtype=np.int64)  # [1,2,3], [4], [5,6]
    ex = make_examples(values, offsets, "prefix")
    prefixes = [ex.values[a:b].tolist() for a, b in zip(ex.offsets[:-1], ex.offsets[1:], strict=True)]
    assert prefixes == [[1], [1, 2], [5]]
    assert ex.targets.tolist() == [2, 3, 6] and ex.session.tolist() == [0, 0, 2]
    last = make_examples(values, offsets, "last")
    assert [last.values[a:b].tolist() for a, b in zip(last.offsets[:-1], last.offsets[1:], strict=True)] == [
        [1, 2],
        [5],
    ]
    assert last.targets.tolist() == [3, 6] and last.session.tolist() == [0, 2]
    empty = make_examples(values[:0], np.array([0]), "prefix")
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
