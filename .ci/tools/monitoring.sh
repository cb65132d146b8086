#!/usr/bin/env bash
# prometheus and promtool for the monitoring tests (tests/unit/test_monitoring_rules.py,
# tests/e2e/test_monitoring.py): Debian's `prometheus` package. The tests start prometheus
# themselves on 127.0.0.1 with a generated config and stop it by PID, so the package must not
# start its system service: a policy-rc.d that forbids starting services is in place while it
# installs. Idempotent: does nothing when both programs are there.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "prometheus found: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
policy=/usr/sbin/policy-rc.d
added_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# installing packages without starting their services\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  added_policy=true
fi
cleanup() {
  if [ "$added_policy" = true ]; then
    "${sudo[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus
command -v prometheus >/dev/null && command -v promtool >/dev/null
