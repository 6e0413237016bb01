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


def _shares(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.shares_memory(a, b)


def test_variables_offer_what_they_save_and_are_not_asked(tmp_path, monkeypatch) -> None:
    live = [gpuckpt.Variable(np.zeros(5, np.int64)), gpuckpt.Variable(np.zeros((2, 3), np.float32))]
    for v in live:  # the contract _values_are_destinations states, checked on the class that states it
        assert _shares(v._restore_destinations()["VARIABLE_VALUE"], v._serialize_tensors()["VARIABLE_VALUE"])
    saved = gpuckpt.Checkpoint(a=gpuckpt.Variable(np.arange(5, dtype=np.int64)),
                               b=gpuckpt.Variable(np.ones((2, 3), np.float32))).write(str(tmp_path / "c"))
    arrays = [v.value() for v in live]

    def refuse(self):
        raise AssertionError("asked for destinations its values already are")

    monkeypatch.setattr(gpuckpt.Variable, "_restore_destinations", refuse)
    gpuckpt.Checkpoint(a=live[0], b=live[1]).read(saved)
    assert live[0].value() is arrays[0] and np.array_equal(arrays[0], np.arange(5))  # read in place
    assert live[1].value() is arrays[1] and np.array_equal(arrays[1], np.ones((2, 3)))


def test_a_subclass_that_changes_what_it_offers_is_asked_again(tmp_path) -> None:
    handed = []

    class Declining(gpuckpt.Variable):
        def _restore_destinations(self):
            return {}  # restore through _restore_tensors, never in place

        def _restore_tensors(self, values):
            handed.append(values["VARIABLE_VALUE"])
            super()._restore_tensors(values)

    class Restating(Declining):
        _values_are_destinations = True

    assert gpuckpt.Variable._values_are_destinations and not Declining._values_are_destinations
    assert Restating._values_are_destinations and not Trackable._values_are_destinations
    saved = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(4, dtype=np.float32))).write(str(tmp_path / "c"))
    live = Declining(np.zeros(4, np.float32))
    before = live.value()
    gpuckpt.Checkpoint(v=live).read(saved)
    assert len(handed) == 1 and handed[0] is not before  # read into a new array, then handed over
    assert np.array_equal(live.numpy(), np.arange(4))
