#!/usr/bin/env bash
# For tests/e2e/test_reproducibility.py: qemu-x86_64 (Debian's qemu-user), which runs this
# environment's Python as another CPU model (an AMD EPYC-Rome, an Intel Haswell) so the test
# trains on another vendor's CPU, and gdb, which watches the training for calls into oneMKL's
# vector math. Idempotent: installs only what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../apt.bash"
missing=()
command -v qemu-x86_64 >/dev/null || missing+=(qemu-user)
command -v gdb >/dev/null || missing+=(gdb)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
echo "$(qemu-x86_64 --version | head -1); $(gdb --version | head -1)"
