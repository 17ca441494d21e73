"""The trainer's malloc tuning: large freed tensors stay in the heap (glibc only)."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from intentrec import training
from intentrec.training import allocator, trainer
from intentrec.training.config import TrainerConfig
from tests.helpers.tinyrun import TEST_BACKBONE, write_tiny_dataset

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt"
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _mallinfo() -> _MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def _mmapped_bytes() -> int:
    return _mallinfo().hblkhd


# What is asserted is what the tuning guarantees: a block below the raised mmap threshold is never
# served by mmap, and freeing it does not hand the heap back to the OS. Not asserted, because they
# depend on what earlier code in the process left in the heap: whether a block *above* the threshold
# is mmapped (glibc calls mmap only when no free heap memory fits the request), and whether a freed
# block is the one a later request reuses (small allocations in between can split it).


@glibc_only
def test_blocks_below_the_threshold_come_from_the_heap_once_tuned():
    assert allocator.keep_freed_memory()
    assert allocator.applied() is True
    for n_floats in (250_000, 5_000_000, 7_500_000):  # 1 MB (above glibc's default 128 KiB), 20 MB, 30 MB
        assert n_floats * 4 < allocator.MMAP_THRESHOLD
        before = _mmapped_bytes()
        block = torch.empty(n_floats)
        block.fill_(1.0)
        assert _mmapped_bytes() - before < 1_000_000
        del block


@glibc_only
def test_a_freed_large_tensor_stays_with_the_process():
    assert allocator.keep_freed_memory()
    before = _mmapped_bytes()
    for _ in range(10):
        block = torch.empty(5_000_000)  # 20 MB
        block.fill_(1.0)
        held = _mallinfo().arena
        del block
        assert _mallinfo().arena >= held  # the free did not trim the heap: the memory stays for reuse
    assert _mmapped_bytes() - before < 1_000_000  # and no round mmapped its block


class _FakeLibc:
    def __init__(self, accepts: set[int]):
        self.accepts = accepts
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return int(param in self.accepts)


def test_it_reports_whether_both_settings_were_accepted(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    both = _FakeLibc({allocator._M_MMAP_THRESHOLD, allocator._M_TRIM_THRESHOLD})
    monkeypatch.setattr(allocator, "_glibc", lambda: both)
    assert allocator.keep_freed_memory() is True and allocator.applied() is True
    assert both.calls == [
        (allocator._M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD),
        (allocator._M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD),
    ]
    one = _FakeLibc({allocator._M_TRIM_THRESHOLD})
    monkeypatch.setattr(allocator, "_glibc", lambda: one)
    assert allocator.keep_freed_memory() is False and allocator.applied() is False
    assert len(one.calls) == 2  # the trim threshold is still set
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # not glibc
    assert allocator.keep_freed_memory() is False and allocator.applied() is False


def test_the_trainer_setting_is_on_by_default_and_may_change_on_resume():
    assert TrainerConfig.build({}).keep_freed_memory is True
    off = TrainerConfig.build({"keep_freed_memory": False})
    assert off.resume_key() == TrainerConfig.build({}).resume_key()


def test_the_trainer_calls_it_only_when_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    data = write_tiny_dataset(tmp_path / "data")
    for flag, expected in ((False, 0), (True, 1)):
        training.train(
            data,
            TEST_BACKBONE,
            trainer_config={"epochs": 1, "keep_freed_memory": flag},
            out=tmp_path / f"run-{flag}",
            progress=False,
        )
        assert len(calls) == expected
