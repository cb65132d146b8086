# Storage and tracking (docs/storage.md). DVC keeps datasets in the remote `data` (the default)
# and models in `models` (dvc.yaml's model outputs name it); these targets re-point both.
# Commit .dvc/config afterwards. Credentials never go there: use `dvc remote modify --local`
# or the backend's environment variables.
#   make remote-s3 DATA_URL=s3://bucket/data MODELS_URL=s3://bucket/models [ENDPOINT=http://minio:9000] [REGION=eu-central-1]
#   make remote-oss DATA_URL=oss://bucket/data MODELS_URL=oss://bucket/models ENDPOINT=oss-cn-hangzhou.aliyuncs.com
#   make remote-local [DATA_URL=dir MODELS_URL=dir]
.PHONY: remote-local remote-s3 remote-oss mlflow-server bench-storage

LOCAL_DATA_URL := ../mlpipe-storage/data
LOCAL_MODELS_URL := ../mlpipe-storage/models
REMOTES := data models

# $(call remote-urls,scheme): fail unless DATA_URL and MODELS_URL are set and use that scheme.
define remote-urls
$(if $(filter $(1)://%,$(DATA_URL)),,$(error set DATA_URL=$(1)://BUCKET/PATH for the data remote))
$(if $(filter $(1)://%,$(MODELS_URL)),,$(error set MODELS_URL=$(1)://BUCKET/PATH for the models remote))
endef

# `dvc remote add --force` replaces a remote's whole section, so no option of the previous
# backend (an endpoint, a region) is left behind.
define point-remotes
dvc remote add --force --default data $(1)
dvc remote add --force models $(2)
endef

remote-local: ## Point the remotes at directories beside the repository (the default)
	$(call point-remotes,$(or $(DATA_URL),$(LOCAL_DATA_URL)),$(or $(MODELS_URL),$(LOCAL_MODELS_URL)))
	dvc remote list

remote-s3: ## Point the remotes at S3 or MinIO (DATA_URL, MODELS_URL, [ENDPOINT], [REGION])
	$(call remote-urls,s3)
	$(call point-remotes,$(DATA_URL),$(MODELS_URL))
	$(if $(ENDPOINT),for remote in $(REMOTES); do dvc remote modify $$remote endpointurl $(ENDPOINT) || exit 1; done)
	$(if $(REGION),for remote in $(REMOTES); do dvc remote modify $$remote region $(REGION) || exit 1; done)
	dvc remote list

remote-oss: ## Point the remotes at Aliyun OSS (DATA_URL, MODELS_URL, ENDPOINT)
	$(call remote-urls,oss)
	$(if $(ENDPOINT),,$(error set ENDPOINT to the bucket's OSS endpoint, e.g. oss-cn-hangzhou.aliyuncs.com))
	$(call point-remotes,$(DATA_URL),$(MODELS_URL))
	for remote in $(REMOTES); do dvc remote modify $$remote oss_endpoint $(ENDPOINT) || exit 1; done
	dvc remote list

# The team tracking server: runs and the model registry in PostgreSQL, artifacts in S3, which
# clients read and write directly (--no-serve-artifacts), so registered versions carry s3://
# URIs that deployments download. On one box, a SQLite file instead, with artifacts in a local
# folder that the server reads and writes for its clients (--serve-artifacts). MLflow reads
# these variables from the environment too.
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 2
MLFLOW_ARTIFACTS_DESTINATION ?= ./mlartifacts

# Checked when the makefile is read, so that a missing setting stops before `setup` runs.
ifneq ($(filter mlflow-server,$(MAKECMDGOALS)),)
  ifneq ($(filter sqlite:///%,$(MLFLOW_BACKEND_STORE_URI)),)
    MLFLOW_ARTIFACT_OPTIONS = --serve-artifacts --artifacts-destination '$(MLFLOW_ARTIFACTS_DESTINATION)'
  else ifneq ($(filter postgresql%,$(MLFLOW_BACKEND_STORE_URI)),)
    ifeq ($(filter s3://%,$(MLFLOW_DEFAULT_ARTIFACT_ROOT)),)
      $(error set MLFLOW_DEFAULT_ARTIFACT_ROOT=s3://BUCKET/mlartifacts)
    endif
    MLFLOW_ARTIFACT_OPTIONS = --default-artifact-root '$(MLFLOW_DEFAULT_ARTIFACT_ROOT)' --no-serve-artifacts
  else
    $(error set MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://USER@HOST:5432/DB (the password in PGPASSWORD), or sqlite:///PATH.db on one box)
  endif
endif

mlflow-server: setup ## Run the MLflow server (PostgreSQL + S3, or SQLite on one box; docs/storage.md)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server \
	  --backend-store-uri '$(MLFLOW_BACKEND_STORE_URI)' $(MLFLOW_ARTIFACT_OPTIONS) \
	  --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

bench-storage: setup ## Time dvc push/pull to S3 and MLflow's share of training time
	python -m benchmarks.storage
