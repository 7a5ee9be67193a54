#!/usr/bin/env bash
# Install the pipeline and its test tools on a fresh Debian/Ubuntu machine with Python >= 3.10.
# Also installs Debian's dataset-fashion-mnist (real images for the embedded demo) when apt is there,
# and tries Chromium (for the test that takes a picture of the report page).
set -euo pipefail
cd "$(dirname "$0")/.."

has_browser() {  # the browsers bench/report_screenshot.py looks for
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" >/dev/null && return 0
  done
  return 1
}

if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  apt_get() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
  fashion=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
  if [ ! -f "$fashion" ] || ! has_browser; then
    apt_get update -qq || echo "install.sh: apt-get update failed; installing from the lists there are" >&2
  fi
  if [ ! -f "$fashion" ]; then
    apt_get install -y -qq dataset-fashion-mnist >/dev/null
  fi
  # Best effort, about a minute on Debian 12: without a browser that one test is skipped. (On Ubuntu
  # the package is a snap, which containers cannot run.)
  if ! has_browser; then
    apt_get install -y -qq chromium >/dev/null 2>&1 \
      || echo "install.sh: Chromium not installed; the report screenshot test will be skipped" >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
