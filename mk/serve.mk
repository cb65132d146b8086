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

bench-serve: setup ## Load-test the local server (needs wrk); figures for BENCHMARKS.md
	dvc repro package
	python benchmarks/serve.py --model-dir models/package

# Both print YAML for `kubectl apply -f -` on stdout: no prerequisites, no echoed commands.
deploy-manifest: ## Render deploy/ (ENV, IMAGE, STORAGE_URI; optional CANARY, MODEL_NAME)
	@python -m mlpipe.serving.render manifest --env "$(ENV)" --image "$(IMAGE)" \
	  --storage-uri "$(STORAGE_URI)" --canary "$(CANARY)" --model-name "$(MODEL_NAME)"

deploy-secret: ## Render the S3 Secret for ENV from S3_* and AWS_* environment variables
	@python -m mlpipe.serving.render secret --env "$(ENV)"
