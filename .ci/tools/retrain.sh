#!/usr/bin/env bash
# amtool (Debian's prometheus-alertmanager) for tests/e2e/test_retrain_alerting.py, which checks
# deploy/monitoring/alertmanager-retrain.yaml with Alertmanager's own parser. gitlab-ci-local for
# the retrain jobs comes from ci.sh. Idempotent: does nothing when amtool is there.
set -euo pipefail
if command -v amtool >/dev/null; then
  echo "amtool found: $(command -v amtool)"
  exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# the package's service is not started in a container (no init); only amtool is used
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus-alertmanager
command -v amtool >/dev/null
