"""Hyperparameter search over the pipeline's params: the search space (tune.yaml), the study
runner (`mlpipe tune`), the per-epoch reporter used for pruning, and the Katib rendering."""
