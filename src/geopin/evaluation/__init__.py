"""Measuring by distance: cross-validation, tables, report."""
