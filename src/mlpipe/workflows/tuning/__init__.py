"""Hyperparameter search over the pipeline's params: the search space (tune.yaml), the study
runner (`mlpipe tune`) and its warm stage processes (prefork), one trial's DVC experiment, and the
Katib rendering. The train loop's per-epoch report to the study is mlpipe.tracking.trials."""
