"""MLflow: runs and their lineage tags, the model registry and its aliases, a tuning trial's
link from the train loop to its study. Imports `contracts` and `core`."""
