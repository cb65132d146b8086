# Serving and deployment: the local model server, its client, its load test, the k8s manifests.
# docs/serving.md explains each.

SERVE_PORT ?= 8080
N ?= 10

.PHONY: serve predict bench-serve deploy-manifest deploy-secret

serve: setup ## Serve models/package on http://127.0.0.1:$(SERVE_PORT) (V1 + V2)
	mlpipe serve --model-dir models/package --host 127.0.0.1 --http-port $(SERVE_PORT)

predict: setup ## Send N random test images to a server (URL=..., default the local one)
	mlpipe predict --url $(or $(URL),http://127.0.0.1:$(SERVE_PORT)) --n $(N)

bench: bench-serve

# MLServer cannot share an environment with kserve (FastAPI/Starlette pins): its own, for the benchmark.
MLSERVER_VENV ?= .cache/mlserver
$(MLSERVER_VENV)/bin/mlserver:
	python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install 'mlserver==1.7.1' 'mlserver-mlflow==1.7.1' 'mlflow==3.17.2' \
	  'onnx==1.23.2' 'onnxruntime==1.32.0'

bench-serve: setup $(MLSERVER_VENV)/bin/mlserver ## Load-test mlpipe serve against MLflow, MLServer and the floor (needs wrk)
	dvc repro package
	python -m benchmarks.serve --model-dir models/package --mlserver-venv $(MLSERVER_VENV)

# Both print YAML for `kubectl apply -f -` on stdout: no prerequisites, no echoed commands.
deploy-manifest: ## Render deploy/ (ENV, IMAGE, STORAGE_URI; optional CANARY, MODEL_NAME)
	@python -m mlpipe.serving.render manifest --env "$(ENV)" --image "$(IMAGE)" \
	  --storage-uri "$(STORAGE_URI)" --canary "$(CANARY)" --model-name "$(MODEL_NAME)"

deploy-secret: ## Render the S3 Secret for ENV from S3_* and AWS_* environment variables
	@python -m mlpipe.serving.render secret --env "$(ENV)"
