#!/usr/bin/env bash
# Sets up everything on a fresh machine: the offline data set (Debian package
# dataset-fashion-mnist, unless FASHION_MNIST_DIR points at its IDX files),
# a C++ compiler, a virtualenv in .venv with the pinned requirements, and the
# oneDNN convolution kernel (Linux x86-64). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=()
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  debian_packages+=(dataset-fashion-mnist)
fi
command -v g++ >/dev/null || debian_packages+=(g++)
if [ ${#debian_packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${debian_packages[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  .venv/bin/python -m cnn.kernels.build
fi
echo "Set-up done: .venv is ready."
