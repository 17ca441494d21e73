"""Session strategies on tiny hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.data.loaders.base import RawInteractions, empty_items, to_events
from intentrec.data.sessions import build_sessions
from intentrec.errors import DataError

DAY = 86_400


def _raw(keys, items, times=None, order=None) -> RawInteractions:
    events = to_events(
        np.array(keys, dtype=object),
        np.array(items, dtype=object),
        None if times is None else np.array(times, dtype=float),
        None if order is None else np.array(order, dtype=float),
    )
    return RawInteractions("test", "test", "user", events, empty_items(), inputs=[])


def _as_lists(sessions) -> list[list[str]]:
    items = sessions.item_vocab[sessions.values]
    return [list(items[a:b]) for a, b in zip(sessions.offsets[:-1], sessions.offsets[1:], strict=True)]


def test_given_orders_by_order_key_then_file_order_and_keys_by_first_appearance():
    raw = _raw(["b", "a", "b", "b", "a"], ["x", "p", "y", "z", "q"], order=[2, 0, 1, 1, 0])
    sessions = build_sessions(raw, "given")
    # key b first (it appears first); inside b: order 1 (y, then z by file order), then 2 (x)
    assert _as_lists(sessions) == [["y", "z", "x"], ["p", "q"]]
    assert list(sessions.session_ids) == ["b", "a"]


def test_user_is_the_same_as_given():
    raw = _raw(["u", "u", "v"], ["a", "b", "c"], times=[5, 1, 3])
    assert _as_lists(build_sessions(raw, "user")) == [["b", "a"], ["c"]]


def test_gap_splits_after_strictly_more_than_the_gap():
    raw = _raw(["u"] * 5, list("abcde"), times=[0, 1000, 2800, 4601, 4700])
    # gaps: 1000, 1800 (not > 1800: same session), 1801 (new), 99
    sessions = build_sessions(raw, "gap", gap_seconds=1800)
    assert _as_lists(sessions) == [["a", "b", "c"], ["d", "e"]]
    assert list(sessions.session_ids) == ["u#0", "u#1"]


def test_clock_bins_are_fixed_600_second_bins():
    # times 0 and 599 share bin 0; 600 and 1199 bin 1; 1300 bin 2 — however close 599 and 600 are
    raw = _raw(["u"] * 5 + ["v"], list("abcdef"), times=[1199, 0, 600, 1300, 599, 10])
    sessions = build_sessions(raw, "clock-bin", bin_seconds=600)
    assert _as_lists(sessions) == [["b", "e"], ["c", "a"], ["d"], ["f"]]
    assert list(sessions.session_ids) == ["u#0", "u#1", "u#2", "v#0"]


def test_day_window_300s_from_session_start_and_single_rating_days_dropped():
    times = [0, 100, 300, 301, 700, 900, DAY + 50, 2 * DAY + 10, 2 * DAY + 20]
    raw = _raw(["u"] * 9 + ["v"], list("abcdefghij"), times=times + [5])
    sessions = build_sessions(raw, "day-window", window_seconds=300)
    # day 0: window opened at 0 takes 0,100,300; 301 opens the next (301-0 > 300) and 700 is > 300 after
    # 301, so [d] alone; then [e, f]. Day 1 holds one rating (dropped), day 2 → [h, i]; v's only day too.
    assert _as_lists(sessions) == [["a", "b", "c"], ["d"], ["e", "f"], ["h", "i"]]
    assert list(sessions.session_ids) == ["u#0", "u#1", "u#2", "u#3"]


def test_day_window_uses_utc_calendar_days():
    # 23:59:00 and 00:01:00 the next day are 120 s apart but on two days: never one session
    raw = _raw(["u"] * 4, list("abcd"), times=[DAY - 60, DAY - 30, DAY + 60, DAY + 90])
    assert _as_lists(build_sessions(raw, "day-window")) == [["a", "b"], ["c", "d"]]


def test_time_strategies_need_times():
    raw = _raw(["u", "u"], ["a", "b"], order=[0, 1])
    with pytest.raises(DataError, match="needs interaction times"):
        build_sessions(raw, "gap")


def test_end_times_and_reorder():
    raw = _raw(["u", "u", "v"], ["a", "b", "c"], times=[5, 9, 7])
    sessions = build_sessions(raw, "user")
    assert sessions.end_times().tolist() == [9.0, 7.0]
    flipped = sessions.reorder(np.array([1, 0]))
    assert _as_lists(flipped) == [["c"], ["a", "b"]]
    assert flipped.times.tolist() == [7.0, 5.0, 9.0]
