#!/usr/bin/env bash
# Image builds without a Docker engine, for tests/e2e/test_serve_image.py: Debian's buildah
# (`buildah bud --isolation chroot --storage-driver vfs` needs no daemon and no user namespaces
# beyond chroot) and debootstrap (the test's base image is made from Debian's own packages, so
# no registry is needed for it). Idempotent: does nothing when both are there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"

if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then
  echo "buildah and debootstrap found: $(buildah --version)"
  exit 0
fi

apt_install buildah debootstrap
buildah --version
