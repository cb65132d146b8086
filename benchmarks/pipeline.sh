#!/usr/bin/env bash
# Pipeline wall time, measured with hyperfine on a throwaway clone of this repository:
#   - the whole default pipeline from scratch (`dvc repro --force`: every stage runs),
#   - each stage's command on its own (imports included: each stage is a fresh process),
#   - a no-op `dvc repro` and `dvc status` once everything is up to date.
# Usage: benchmarks/pipeline.sh [RUNS]   (needs hyperfine: apt-get install hyperfine)
set -euo pipefail
runs="${1:-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v hyperfine >/dev/null || { echo "hyperfine is not installed (apt-get install hyperfine)" >&2; exit 1; }
command -v dvc >/dev/null || { echo "dvc is not on PATH: run 'make setup' and use 'make bench-pipeline'" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$root" "$work/project"
cd "$work/project"
unset MLFLOW_TRACKING_URI

echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
echo "python $(python --version 2>&1 | cut -d' ' -f2), torch $(python -c 'import torch; print(torch.__version__)'), dvc $(dvc --version)"
hyperfine --runs "$runs" --export-markdown "$work/full.md" --command-name "dvc repro --force (full pipeline)" \
  "dvc repro --force --quiet"
hyperfine --runs "$runs" --export-markdown "$work/stages.md" \
  "mlpipe prepare" "mlpipe train" "mlpipe evaluate" "mlpipe package"
hyperfine --warmup 1 --runs 10 --export-markdown "$work/noop.md" \
  --command-name "dvc repro (no-op)" "dvc repro --quiet" \
  --command-name "dvc status" "dvc status --quiet"
cat "$work/full.md" "$work/stages.md" "$work/noop.md"
