"""Checkpoint's one save hook (``Checkpoint._write``): its callers use no other private member."""

from __future__ import annotations

import ast
import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.checkpoint import Numbering

ROOT = Path(gpuckpt.__file__).parent
CALLERS = ("manager.py", "distributed/checkpoint.py")


def private_checkpoint_members(source: str) -> set[str]:
    """The private attributes read from an expression naming a checkpoint (``checkpoint._x``,
    ``self._checkpoint._x``, ``self.owner.checkpoint._x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if name.lstrip("_") == "checkpoint":
                found.add(node.attr)
    return found


def test_the_walk_finds_private_accesses() -> None:
    source = "with checkpoint._self_save_lock:\n    self._checkpoint._make_room(o)\nself.owner.checkpoint._graph()\n"
    assert private_checkpoint_members(source) == {"_self_save_lock", "_make_room", "_graph"}
    assert private_checkpoint_members("checkpoint.save_counter\nself._manager._forget_deleted()\n") == set()


@pytest.mark.parametrize("module", CALLERS)
def test_callers_use_only_the_save_hook(module: str) -> None:
    assert private_checkpoint_members((ROOT / module).read_text()) == {"_write"}


def _checkpoint() -> gpuckpt.Checkpoint:
    return gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(4, dtype=np.float32)))


def test_hook_numbers_guards_and_calls_back_after_the_commit(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    events = []

    @contextlib.contextmanager
    def guard():
        events.append("enter")
        yield
        events.append("leave")

    def done(path: str) -> None:
        events.append(("done", os.path.basename(path), os.path.exists(path + ".index")))

    path = ckpt._write(str(tmp_path / "ignored"), numbering=Numbering(lambda n: str(tmp_path / f"c-{n}")),
                       guard=guard, write_done_callback=done)
    assert path == str(tmp_path / "c-1") and int(ckpt.save_counter.numpy()) == 1
    assert events == ["enter", ("done", "c-1", True), "leave"]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_hook_gives_the_number_back_when_nothing_is_committed(tmp_path: Path, asynchronous: bool) -> None:
    ckpt = _checkpoint()
    options = gpuckpt.CheckpointOptions(enable_async=asynchronous)

    def fail(path: str) -> None:
        raise gpuckpt.CheckpointError("refused")

    numbering = Numbering(lambda n: str(tmp_path / f"c-{n}"), advance=lambda n: n + 5,
                          give_back_on_async_failure=True)
    if asynchronous:
        assert ckpt._write("", options, numbering=numbering, write_done_callback=fail) == str(tmp_path / "c-5")
        with pytest.raises(gpuckpt.CheckpointError, match="refused"):
            ckpt.sync()
    else:
        with pytest.raises(gpuckpt.CheckpointError, match="refused"):
            ckpt._write("", options, numbering=numbering, write_done_callback=fail)
    assert int(ckpt.save_counter.numpy()) == 0
    assert ckpt.save(tmp_path / "ok", options).endswith("ok-1")
    ckpt.sync()


def test_async_failure_keeps_the_number_by_default(tmp_path: Path) -> None:
    ckpt = _checkpoint()

    def fail(path: str) -> None:
        raise gpuckpt.CheckpointError("refused")

    ckpt._write("", gpuckpt.CheckpointOptions(enable_async=True),
                numbering=Numbering(lambda n: str(tmp_path / f"c-{n}")), write_done_callback=fail)
    with pytest.raises(gpuckpt.CheckpointError, match="refused"):
        ckpt.sync()
    assert int(ckpt.save_counter.numpy()) == 1  # a later save may already have taken the next number
