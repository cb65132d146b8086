#!/usr/bin/env bash
# Tools for tests/e2e/test_gitlab_ci.py: gitlab-ci-local (npm, into .cache/node) and the rsync it
# calls. Idempotent: installs only what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"
cd "$(dirname "$0")/../.."
if ! command -v rsync >/dev/null; then
  apt_install rsync
fi
if ! command -v npm >/dev/null; then
  echo "ci.sh: gitlab-ci-local needs Node.js 20 with npm; install it first" >&2
  exit 1
fi
make --no-print-directory ci-tools
