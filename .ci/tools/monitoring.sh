#!/usr/bin/env bash
# prometheus and promtool for the monitoring tests (tests/unit/test_monitoring_rules.py,
# tests/e2e/test_monitoring.py): Debian's `prometheus` package. The tests start prometheus
# themselves on 127.0.0.1 with a generated config and stop it by PID, so the package must not
# start its system service: a policy-rc.d that forbids starting services is in place while it
# installs. Idempotent: does nothing when both programs are there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "prometheus found: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi

policy=/usr/sbin/policy-rc.d
added_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# installing packages without starting their services\nexit 101\n' | as_root tee "$policy" >/dev/null
  as_root chmod 755 "$policy"
  added_policy=true
fi
cleanup() {
  if [ "$added_policy" = true ]; then
    as_root rm -f "$policy"
  fi
}
trap cleanup EXIT

apt_install prometheus
command -v prometheus >/dev/null && command -v promtool >/dev/null
