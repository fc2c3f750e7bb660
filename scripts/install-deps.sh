#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those that are missing, plus any
# named as arguments (the evidence scripts ask for python3). Safe to rerun. Uses sudo
# when not root.
set -euo pipefail
packages=(g++ cmake make pkg-config gnuplot-nox libpcre2-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev libfmt-dev googletest libgtest-dev libbenchmark-dev libcpp-httplib-dev "$@")
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
