# syntax=docker/dockerfile:1
# Two images from one file (docs/serving.md):
#   docker build --target serve -t mlpipe-serve .   slim CPU model server, KServe's custom predictor
#   docker build --target train -t mlpipe-train .   CUDA image for the self-hosted GPU runner
# Models are not baked in: KServe's storage initializer puts the package under /mnt/models.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- serve: build the project and its `serve` extra into a virtual environment --------------
FROM ${PYTHON_IMAGE} AS serve-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml requirements.lock README.md ./
COPY src/ src/
# Only the serve extra (kserve, onnxruntime, httpx): no torch, sklearn, mlflow or dvc.
# Behind a TLS-intercepting proxy, pass its CA bundle as the build secret `pip-ca`
# (docs/serving.md): pip then verifies against it; it is never stored in a layer.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python -m venv /opt/mlpipe \
    && /opt/mlpipe/bin/pip install --constraint requirements.lock ".[serve]"

# --- serve: the runtime image ---------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS serve
RUN groupadd --system --gid 10001 mlpipe \
    && useradd --system --uid 10001 --gid mlpipe --no-create-home --shell /usr/sbin/nologin mlpipe
COPY --from=serve-build /opt/mlpipe /opt/mlpipe
ENV PATH=/opt/mlpipe/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
# Slim images have no curl: ask the server's readiness endpoint with Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
ENTRYPOINT ["mlpipe", "serve"]
CMD ["--model-dir", "/mnt/models", "--http-port", "8080"]

# --- train: CUDA torch + the pipeline, for `dvc repro` on a GPU ------------------------------
# PyTorch's CUDA wheels carry the CUDA libraries; the GPU driver comes from the host through
# the NVIDIA container runtime. So the same Python as everywhere else, no CUDA base image.
FROM ${PYTHON_IMAGE} AS train
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/mlpipe/bin:$PATH
# git for DVC and the lineage, make for the Makefile's targets; the versions
# follow the pinned base image, so they are not pinned again here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml requirements.lock README.md ./
COPY src/ src/
# The CUDA build of the same torch version first, then everything else pinned by the lock file
# (the serve extra too: the smoke test runs `mlpipe predict` from this image).
RUN python -m venv /opt/mlpipe \
    && /opt/mlpipe/bin/pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}" \
    && /opt/mlpipe/bin/pip install --constraint requirements.lock ".[train,pipeline,serve]"
WORKDIR /workspace
CMD ["dvc", "repro"]
