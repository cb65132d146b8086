# Hyperparameter search: `mlpipe tune` (README "Tuning"). Included by the Makefile.
.PHONY: tune bench-tune

tune: setup ## Run (or continue) the study of tune.yaml
	mlpipe tune

bench: bench-tune

bench-tune: setup ## Trial overhead of `mlpipe tune`, and 20 TPE vs 20 random trials
	python -m benchmarks.tune --trials 3 --compare 20
