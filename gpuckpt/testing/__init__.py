"""Test kit shipped with gpuckpt: fault injection for storage."""
