# Monitoring (README, "Monitoring"): what the model metrics and the drift window cost, and the
# dashboard's panels drawn from a real Prometheus (docs/monitoring/dashboard.png).
.PHONY: bench-monitoring

bench: bench-monitoring

bench-monitoring: setup ## Cost of the model metrics; redraw the dashboard picture (needs wrk, prometheus)
	dvc repro package
	python -m benchmarks.monitoring --model-dir models/package
