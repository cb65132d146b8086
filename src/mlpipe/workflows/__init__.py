"""What runs the stages and judges their results: the merge request's report, the gate,
continuous training, tuning (with its warm stage processes), verification, the run cache.
Import everything below them; only the CLI imports them."""
