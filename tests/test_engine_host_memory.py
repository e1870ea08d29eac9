"""The trainer's host-memory setting: glibc keeps freed multi-megabyte blocks instead of unmapping them."""

from __future__ import annotations

import ctypes

import pytest
import torch

from longtail.engine import host_memory


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


@pytest.fixture
def fresh_setting(monkeypatch):
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    host_memory.keep_freed_memory.cache_clear()
    yield
    host_memory.keep_freed_memory.cache_clear()


def mmapped_bytes(libc: ctypes.CDLL) -> int:
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


def test_large_tensors_come_from_the_kept_heap(fresh_setting):
    libc = host_memory._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33")
    assert host_memory.keep_freed_memory()
    before = mmapped_bytes(libc)
    tensor = torch.empty(16 << 20, dtype=torch.uint8)  # 16 MiB: above glibc's default (dynamic) threshold start
    during = mmapped_bytes(libc)
    del tensor
    assert during - before < 16 << 20


def test_a_users_allocator_choice_is_left_alone(fresh_setting, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not host_memory.keep_freed_memory()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    host_memory.keep_freed_memory.cache_clear()
    assert not host_memory.keep_freed_memory()
