"""Saved workflows: JSON graphs with named inputs, executed on the shared engine."""
