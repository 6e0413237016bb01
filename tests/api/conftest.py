"""Collect each test's restore sessions before the next test, so their warnings stay with their test."""

from __future__ import annotations

import gc
import warnings

import pytest

from gpuckpt.restorer import UnrestoredValuesWarning


@pytest.fixture(autouse=True)
def collect_sessions():
    """Tests that leave values unused on purpose would otherwise warn inside later tests."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrestoredValuesWarning)
        gc.collect()
