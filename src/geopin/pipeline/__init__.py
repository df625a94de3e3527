"""Whole workflows that chain the stages: build."""
