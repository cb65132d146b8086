# Sourced by the scripts in .ci/tools/ (not itself a tool: .ci/run runs only .ci/tools/*.sh).
# as_root CMD...: CMD as root, through sudo when this is not root.
# apt_install PACKAGE...: Debian packages, non-interactively and without recommended extras.

as_root() {
  if [ "$(id -u)" -ne 0 ]; then
    sudo "$@"
  else
    "$@"
  fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends "$@"
}
