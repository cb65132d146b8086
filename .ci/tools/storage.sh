#!/usr/bin/env bash
# PostgreSQL's server programs for the tracking-server tests: harness/servers.py runs initdb and
# postgres from /usr/lib/postgresql/*/bin in a temporary directory, on 127.0.0.1, as an
# unprivileged user. The S3 server (moto) comes with the Python dev dependencies.
# Idempotent: does nothing when the programs are there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  echo "PostgreSQL server programs found: $(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)"
  exit 0
fi

# The tests make their own throwaway clusters: keep the package from creating and starting one.
as_root mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.d/mlpipe.conf >/dev/null
apt_install postgresql
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
