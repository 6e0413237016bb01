"""The staging pool: fixed size, FIFO reuse, blocking when full, never grows."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.engine.staging import StagingPool, host_allocator
from tests.unit.signals import SignallingCondition


class CountingAllocator:
    """``host_allocator`` that records the size of every buffer it hands out."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, nbytes: int) -> np.ndarray:
        self.sizes.append(nbytes)
        return host_allocator(nbytes)


def test_leases_are_disjoint_views_of_one_buffer() -> None:
    allocator = CountingAllocator()
    pool = StagingPool(4096, allocator)
    a, b = pool.lease(1000), pool.lease(700)
    a.view[:] = 1
    b.view[:] = 2
    assert a.view.sum() == 1000 and b.view.sum() == 1400 and a.start + 1024 == b.start
    pool.release(a)
    pool.release(b)
    assert pool.in_use == 0 and allocator.sizes == [4096]


def test_lease_larger_than_max_lease_is_refused() -> None:
    pool = StagingPool(4096)
    with pytest.raises(ValueError, match="max_lease"):
        pool.lease(pool.max_lease + 1)


def test_full_pool_blocks_until_release() -> None:
    pool = StagingPool(4096)
    pool._cond = cond = SignallingCondition()  # to know, without sleeping, that the lease waits
    first = pool.lease(2048)
    second = pool.lease(1024)
    assert not cond.waiting.is_set()  # leases that fit never wait
    got = []
    t = threading.Thread(target=lambda: got.append(pool.lease(2048)))
    t.start()
    assert cond.waiting.wait(5), "a lease larger than the free space did not wait"
    assert not got  # 1024 free at the end, 0 at the start: must wait
    pool.release(first)
    t.join(5)
    assert got and got[0].start == 0
    pool.release(second)
    pool.release(got[0])
    with pytest.raises(TimeoutError):
        pool.lease(2048), pool.lease(2048), pool.lease(2048, timeout=0.01)


@given(st.lists(st.integers(1, 2048), min_size=1, max_size=60), st.randoms())
def test_ring_never_overlaps_and_never_grows(sizes, rnd) -> None:
    allocator = CountingAllocator()
    pool = StagingPool(8192, allocator)
    live = []
    for n in sizes:
        while live and (pool.in_use + n > 4096 or rnd.random() < 0.3):
            pool.release(live.pop(0))  # FIFO, as the writer thread releases
        lease = pool.lease(n, timeout=1)
        for other in live:
            assert lease.start + n <= other.start or other.start + other.nbytes <= lease.start
        live.append(lease)
    assert allocator.sizes == [8192]


def test_out_of_order_release_reclaims_in_order() -> None:
    pool = StagingPool(4096)
    a, b = pool.lease(512), pool.lease(512)
    pool.release(b)
    assert pool.in_use == 1024  # b's space waits for a
    pool.release(a)
    assert pool.in_use == 0
    with pytest.raises(ValueError, match="not live"):
        pool.release(a)


def test_closed_pool_refuses_leases() -> None:
    pool = StagingPool(4096, allocator=lambda n: np.zeros(n, np.uint8))
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.lease(10)
