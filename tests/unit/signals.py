"""Test helpers that let a test know, without sleeping, that another thread has started to wait."""

from __future__ import annotations

import threading


class SignallingCondition(threading.Condition):
    """A Condition that sets ``waiting`` each time a thread starts to wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)
