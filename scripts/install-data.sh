#!/usr/bin/env bash
# Installs Fashion-MNIST from Debian's package dataset-fashion-mnist.
# As root: apt-get install. Otherwise: apt-get download + dpkg -x into a cache
# that fedzip also searches (~/.cache/fedzip/debian).
set -euo pipefail
target=/usr/share/datasets/fashion-mnist
cache="${HOME}/.cache/fedzip/debian"
if ls "$target"/train-images-idx3-ubyte* >/dev/null 2>&1 || ls "$cache$target"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
else
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null)
  mkdir -p "$cache"
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$cache"
  rm -rf "$tmp"
fi
echo "Fashion-MNIST installed"
