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


def _mmapped_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblkhd


@glibc_only
def test_a_large_tensor_comes_from_the_heap_once_tuned():
    assert allocator.keep_freed_memory()
    assert allocator.applied() is True
    before = _mmapped_bytes()
    block = torch.empty(5_000_000)  # 20 MB: above glibc's default mmap threshold, below 32 MiB
    assert _mmapped_bytes() - before < 1_000_000
    del block
    # Above glibc's 32 MiB cap the block is still mmapped: the tuning cannot cover it.
    huge = torch.empty(10_000_000)
    assert _mmapped_bytes() - before >= 40_000_000
    del huge


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
            data, TEST_BACKBONE, trainer_config={"epochs": 1, "keep_freed_memory": flag},
            out=tmp_path / f"run-{flag}", progress=False,
        )
        assert len(calls) == expected
