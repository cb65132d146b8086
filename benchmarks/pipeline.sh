#!/usr/bin/env bash
# Pipeline wall time, measured with hyperfine on a throwaway clone of this repository:
#   - the whole default pipeline from scratch (`dvc repro --force`: every stage runs),
#   - each stage's command on its own (imports included: each stage is a fresh process),
#   - a no-op `dvc repro` and `dvc status` once everything is up to date,
#   - `mlpipe train` with the pinned numerics (train.numerics: portable) against native ones,
#   - `dvc repro` after a param revert: restored from the run cache vs the retrain it replaces.
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
set_param() { sed -i "s/^  $1: .*/  $1: $2/" params.yaml; }
hyperfine --runs "$runs" --export-markdown "$work/numerics.md" \
  --prepare "sed -i 's/^  numerics: .*/  numerics: portable/' params.yaml" \
  --command-name "mlpipe train (numerics: portable)" "mlpipe train" \
  --prepare "sed -i 's/^  numerics: .*/  numerics: native/' params.yaml" \
  --command-name "mlpipe train (numerics: native)" "mlpipe train"
set_param numerics portable
dvc repro --quiet
# Each run starts from outputs of another learning rate with params.yaml reverted.
toggle="sed -i 's/^  lr: .*/  lr: 0.01/' params.yaml && dvc repro --quiet && sed -i 's/^  lr: .*/  lr: 0.003/' params.yaml"
hyperfine --runs "$runs" --export-markdown "$work/runcache.md" \
  --prepare "$toggle" --command-name "dvc repro after a param revert (run cache)" "dvc repro --quiet" \
  --prepare "$toggle" --command-name "dvc repro --no-run-cache (retrain)" "dvc repro --quiet --no-run-cache"
cat "$work/full.md" "$work/stages.md" "$work/noop.md" "$work/numerics.md" "$work/runcache.md"
