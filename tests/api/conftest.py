"""Restores make no reference cycles, so a restore's unused-values warning fires inside the test
that made it, when its last reference goes; no collection between tests is needed."""
