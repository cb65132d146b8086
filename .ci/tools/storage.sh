#!/usr/bin/env bash
# PostgreSQL's server programs for the tracking-server tests: tests/servers.py runs initdb and
# postgres from /usr/lib/postgresql/*/bin in a temporary directory, on 127.0.0.1, as an
# unprivileged user. The S3 server (moto) comes with the Python dev dependencies.
# Idempotent: does nothing when the programs are there.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  echo "PostgreSQL server programs found: $(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
# The tests make their own throwaway clusters: keep the package from creating and starting one.
"${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/mlpipe.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
