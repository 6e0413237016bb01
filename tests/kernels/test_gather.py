"""The pointer-table gather kernel (simulator) against its NumPy reference: contiguous and strided
sources, odd offsets, bf16, one launch for many tensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
gather = pytest.importorskip("gpuckpt.kernels.gather")

from gpuckpt.arrays import device_view  # noqa: E402


def entries_for(arrays, chunk=64):
    out, offset = [], 0
    for a in arrays:
        view = device_view(a)
        shape, strides = view.runs()
        out.append((view.address, offset, 0, view.nbytes, view.itemsize, shape, strides))
        offset += view.nbytes + 3  # odd gaps: destinations off the word grid
    return gather.gather_table(out, chunk), offset


def test_kernel_matches_the_reference_on_mixed_layouts(monkeypatch):
    rng = np.random.default_rng(3)
    host = [
        rng.integers(0, 255, 301).astype(np.uint8),
        rng.standard_normal((2, 4, 5, 3)).astype(np.float32),  # NHWC memory, seen as NCHW below
        rng.standard_normal(37).astype(ml_dtypes.bfloat16),
        rng.integers(-5, 5, (6, 4)).astype(np.int64)[:, ::2],  # every other column
    ]
    arrays = [cuda.to_device(host[0]), cuda.to_device(host[1]).transpose((0, 3, 1, 2)),
              cuda.to_device(host[2]), cuda.to_device(np.ascontiguousarray(host[3].base))[:, ::2]]
    host[1] = host[1].transpose(0, 3, 1, 2)
    table, total = entries_for(arrays)
    assert table.shape[0] > len(arrays)  # several chunk rows: one launch still covers them all
    want = np.zeros(total, np.uint8)
    gather.gather_host(table, want)
    dst = cuda.to_device(np.zeros(total, np.uint8))
    gather.launch_gather(cuda.to_device(table), table.shape[0], dst, 0)
    got = dst.copy_to_host()
    assert got.tobytes() == want.tobytes()
    offset = 0
    for h in host:
        c = np.ascontiguousarray(h).tobytes()
        assert got[offset : offset + len(c)].tobytes() == c  # C order, whatever the source layout
        offset += len(c) + 3


def test_views_merge_contiguous_dims_and_keep_permuted_strides():
    a = cuda.to_device(np.zeros((4, 5, 6), np.float32))
    assert device_view(a).runs() == ((120,), (4,))
    view = device_view(cuda.to_device(np.zeros((2, 4, 5, 3), np.float32)).transpose((0, 3, 1, 2)))
    assert not view.contiguous and view.runs() == ((2, 3, 20), (240, 4, 12))  # H and W merge


def test_too_many_unmergeable_dims_are_refused():
    with pytest.raises(ValueError, match="non-mergeable"):
        gather.gather_table([(0, 0, 0, 8, 1, (2,) * 7, (64, 32, 16, 8, 4, 2, 1))])


def test_scatter_undoes_the_gather_into_any_layout():
    """Restores run the table backwards: C-order slot bytes land in strided destinations."""
    rng = np.random.default_rng(8)
    nhwc = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    sources = [cuda.to_device(rng.integers(0, 255, 77).astype(np.uint8)), cuda.to_device(nhwc).transpose((0, 3, 1, 2)),
               cuda.to_device(rng.standard_normal(21).astype(ml_dtypes.bfloat16))]
    table, total = entries_for(sources)
    slot = cuda.to_device(np.zeros(total, np.uint8))
    gather.launch_gather(cuda.to_device(table), table.shape[0], slot, 0)
    targets = [cuda.to_device(np.zeros(77, np.uint8)), cuda.to_device(np.zeros_like(nhwc)).transpose((0, 3, 1, 2)),
               cuda.to_device(np.zeros(21, ml_dtypes.bfloat16))]
    back, _ = entries_for(targets)
    gather.launch_scatter(cuda.to_device(back), back.shape[0], slot, 0)

    def c_bytes(a) -> bytes:
        return np.ascontiguousarray(a.copy_to_host()).tobytes()

    assert [c_bytes(t) for t in targets] == [c_bytes(s) for s in sources]
    again = [cuda.to_device(np.zeros(77, np.uint8)), cuda.to_device(np.zeros_like(nhwc)).transpose((0, 3, 1, 2)),
             cuda.to_device(np.zeros(21, ml_dtypes.bfloat16))]
    rows, _ = entries_for(again)
    gather.scatter_host(rows, slot.copy_to_host())  # the NumPy reference does the same
    assert [c_bytes(t) for t in again] == [c_bytes(s) for s in sources]
