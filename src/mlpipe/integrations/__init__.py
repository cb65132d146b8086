"""Outside systems: Kubernetes manifests through kustomize, the GitLab API, Kubeflow Pipelines.
Import `core` only."""
