#!/usr/bin/env bash
# Installs the Debian packages mocod builds and tests against (needs root or sudo).
# OpenBLAS's OpenMP build shares libgomp's thread pool with oneDNN. Chromium, its driver and
# Selenium run the dashboard's browser test (scripts/e2e_browser.py).
set -euo pipefail
packages=(libopenblas-openmp-dev libdnnl-dev zlib1g-dev libpng-dev libturbojpeg0-dev libssl-dev libsqlite3-dev libopenmpi-dev openmpi-bin pkg-config dataset-fashion-mnist curl python3
  chromium chromium-driver python3-selenium python3-yaml)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
