#!/usr/bin/env bash
# amtool (Debian's prometheus-alertmanager) for tests/e2e/test_retrain_alerting.py, which checks
# deploy/monitoring/alertmanager-retrain.yaml with Alertmanager's own parser. gitlab-ci-local for
# the retrain jobs comes from ci.sh. Idempotent: does nothing when amtool is there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"
if command -v amtool >/dev/null; then
  echo "amtool found: $(command -v amtool)"
  exit 0
fi
# the package's service is not started in a container (no init); only amtool is used
apt_install prometheus-alertmanager
command -v amtool >/dev/null
