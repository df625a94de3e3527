"""Running a stage's per-item work over partitions, locally or on Ray."""
