"""Objects that checkpoints hold: the Trackable protocol, Variable, Module and tracked containers."""

from .base import SlotVariable, Trackable
from .containers import TrackedDict, TrackedList, TrackedTuple
from .module import AutoTrackable, Module
from .variable import Variable

__all__ = ["AutoTrackable", "Module", "SlotVariable", "Trackable", "TrackedDict", "TrackedList",
           "TrackedTuple", "Variable"]
