"""Measuring by distance: cross-validation (crossval), embedding similarity (similarity), tables, plots, report."""
