"""Layout and resharding arithmetic, without MPI: boxes, overlaps, tilings, owners."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuckpt.distributed.layout import (Box, Replicated, Sharded, check_tiling, even_run, intersect, layout_of,
                                        overlaps, set_layout)
from gpuckpt.distributed.save import assign_owners
from gpuckpt.errors import InvalidArgumentError
from gpuckpt.trackable import Variable


@st.composite
def grids(draw, shape):
    """A partition of ``shape`` into a grid of blocks: sorted cut points per dimension."""
    cuts = []
    for dim in shape:
        inner = draw(st.lists(st.integers(1, max(1, dim - 1)), max_size=3, unique=True)) if dim > 1 else []
        cuts.append([0, *sorted(c for c in inner if 0 < c < dim), dim])
    boxes = []
    for index in np.ndindex(*[len(c) - 1 for c in cuts]):
        offsets = tuple(cuts[d][i] for d, i in enumerate(index))
        lengths = tuple(cuts[d][i + 1] - cuts[d][i] for d, i in enumerate(index))
        boxes.append(Box(offsets, lengths))
    return boxes


@st.composite
def two_grids(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    return shape, draw(grids(shape)), draw(grids(shape))


@given(two_grids())
@settings(max_examples=200, deadline=None)
def test_any_grid_reassembles_from_any_other(case):
    shape, saved, wanted = case
    whole = np.arange(int(np.prod(shape))).reshape(shape)
    stored = [whole[b.region()].copy() for b in saved]
    assert check_tiling(shape, saved) is None and check_tiling(shape, wanted) is None
    for target in wanted:
        out = np.full(target.lengths, -1)
        for i, common in overlaps(target, saved):
            out[common.region(target.offsets)] = stored[i][common.region(saved[i].offsets)]
        np.testing.assert_array_equal(out, whole[target.region()])


@given(st.integers(0, 50), st.integers(1, 9))
def test_even_runs_tile_the_dimension(dim, count):
    runs = [even_run(dim, i, count) for i in range(count)]
    assert [start for start, _ in runs] == [sum(n for _, n in runs[:i]) for i in range(count)]
    assert sum(n for _, n in runs) == dim
    assert max(n for _, n in runs) - min(n for _, n in runs) <= 1
    assert [n for _, n in runs] == [len(a) for a in np.array_split(np.arange(dim), count)]


def test_intersect_edges_touching_is_empty():
    assert intersect(Box((0,), (3,)), Box((3,), (2,))) is None
    assert intersect(Box((0, 0), (4, 4)), Box((2, 3), (5, 5))) == Box((2, 3), (2, 1))


@pytest.mark.parametrize(
    "boxes, problem",
    [
        ([Box((0,), (4,)), Box((3,), (3,))], "overlap"),
        ([Box((0,), (4,))], "cover 4 of the 6"),
        ([Box((0,), (4,)), Box((4,), (3,))], "outside"),
    ],
)
def test_check_tiling_names_the_problem(boxes, problem):
    assert problem in check_tiling((6,), boxes)


def test_sharded_validates_its_block():
    with pytest.raises(InvalidArgumentError, match="outside global shape"):
        Sharded((4, 4), (2, 0), (3, 4))
    with pytest.raises(InvalidArgumentError, match="same rank"):
        Sharded((4, 4), (0,), (4,))
    with pytest.raises(InvalidArgumentError, match="scalar"):
        Sharded((), (), ())
    assert Sharded.split((10, 3), 3, 4) == Sharded((10, 3), (8, 0), (2, 3))
    assert Sharded.split((10, 7), 0, 3, axis=1).lengths == (10, 3)


def test_set_layout_checks_the_local_shape_and_defaults_to_replicated():
    v = Variable(np.zeros((2, 3), np.float32))
    assert layout_of(v) == Replicated()
    with pytest.raises(InvalidArgumentError, match="block of \\[3, 3\\]"):
        set_layout(v, Sharded((6, 3), (0, 0), (3, 3)))
    set_layout(v, Sharded((6, 3), (2, 0), (2, 3)))
    assert layout_of(v).offsets == (2, 0)


def test_owners_are_balanced_deterministic_and_pinned():
    sizes = [("a", 100), ("b", 60), ("c", 50), ("d", 10), ("g", 1)]
    owners = assign_owners(sizes, 2, {"g": 0})
    assert owners == assign_owners(list(reversed(sizes)), 2, {"g": 0})
    assert owners["g"] == 0 and owners["a"] != owners["b"]
    load = [sum(n for k, n in sizes if owners[k] == r) for r in range(2)]
    assert abs(load[0] - load[1]) <= 100


def test_distributed_imports_without_mpi4py_and_names_the_extra_when_used() -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        sys.modules["mpi4py"] = None
        import numpy as np, gpuckpt
        from gpuckpt.distributed import DistributedCheckpoint, Sharded
        print("imported", "mpi4py" in sys.modules and sys.modules["mpi4py"] is not None)
        try:
            DistributedCheckpoint(gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(2))))
        except ImportError as exc:
            print("error:", exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported False" in result.stdout
    assert "pip install 'gpuckpt[mpi]'" in result.stdout
