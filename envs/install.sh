#!/usr/bin/env bash
# Install the pipeline and its test tools on a fresh Debian/Ubuntu machine with Python >= 3.10.
# Also installs Debian's dataset-fashion-mnist (real images for the embedded demo) when apt is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
