"""The destinations a restore reads into in place (``RestoreSession._sinks``): only arrays in the stored
layout (dtype and byte order), C-contiguous and writable; every other offer goes through a new array and
``_restore_tensors``, with the same values."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.trackable.base import Trackable


class Offering(Trackable):
    """Saves ``array`` under "x" and offers it (or ``offer``) as the destination to restore into."""

    def __init__(self, array: np.ndarray, offer: object = "same"):
        self.array = array
        self.offer = array if isinstance(offer, str) else offer
        self.received: dict = {}

    def _serialize_tensors(self):
        return {"x": self.array}

    def _restore_destinations(self):
        return {} if self.offer is None else {"x": self.offer}

    def _restore_tensors(self, values):
        self.received = dict(values)


def _saved(tmp_path, value: np.ndarray) -> str:
    return gpuckpt.Checkpoint(t=Offering(value)).write(str(tmp_path / "c"))


def test_the_very_array_a_request_was_made_from_is_filled_in_place(tmp_path) -> None:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    live = Offering(np.zeros((3, 4), np.float32))
    gpuckpt.Checkpoint(t=live).read(_saved(tmp_path, value))
    assert np.array_equal(live.array, value) and live.received == {}


@pytest.mark.parametrize("offer", [
    np.zeros((3, 4), ">f4"),  # the other byte order: bytes read as stored would be wrong
    np.zeros((4, 3), np.float32).T,  # not C-contiguous
    np.zeros((3, 4), np.float64),  # another dtype
    "read-only",
])
def test_other_destinations_are_restored_through_a_new_array(tmp_path, offer) -> None:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = np.zeros((3, 4), np.float32)
    if isinstance(offer, str):  # the very array the request is made from, but read-only
        array.flags.writeable = False
        offer = array
    live = Offering(array, offer)
    gpuckpt.Checkpoint(t=live).read(_saved(tmp_path, value))
    assert not offer.any() and not array.any()  # never written through
    got = live.received["x"]
    assert np.array_equal(got, value) and got.dtype == np.float32


def test_an_object_offering_nothing_is_asked_once_and_gets_a_new_array(tmp_path) -> None:
    value = np.arange(5, dtype=np.int64)
    asked = []

    class Counting(Offering):
        def _restore_destinations(self):
            asked.append(1)
            return {}

    live = Counting(np.zeros(5, np.int64))
    gpuckpt.Checkpoint(t=live).read(_saved(tmp_path, value))
    assert len(asked) == 1 and np.array_equal(live.received["x"], value)
