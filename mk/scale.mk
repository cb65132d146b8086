# Scaling out: torchrun, Kubeflow Trainer and Kubeflow Pipelines (README "Scaling out").
.PHONY: kfp-compile kfp-local bench-scale

kfp-compile: setup ## Compile dvc.yaml into a Kubeflow Pipeline (pipeline.yaml)
	mlpipe kfp compile --out pipeline.yaml

kfp-local: setup ## Run the Kubeflow Pipeline on this machine (KFP's local runner)
	mlpipe kfp run --local

bench: bench-scale

bench-scale: setup ## Training samples/s with 1 and 2 ranks; `kfp run --local` against `dvc repro`
	python benchmarks/distributed.py --repeats 3
