#!/usr/bin/env bash
# Sets up everything on a fresh machine: the offline data set (Debian package
# dataset-fashion-mnist, unless FASHION_MNIST_DIR points at its IDX files),
# a virtualenv in .venv and the pinned requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
echo "Set-up done: .venv is ready."
