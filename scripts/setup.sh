#!/usr/bin/env bash
# Installs the system packages cleanse uses: Mesa's software Vulkan driver (lavapipe), so that
# `--device wgpu` works on machines without a GPU. Rust itself comes from rustup (1.95+).
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.95 or newer with rustup (https://rustup.rs)" >&2
  exit 1
fi
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s mesa-vulkan-drivers >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "== installing mesa-vulkan-drivers (software Vulkan for --device wgpu without a GPU)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mesa-vulkan-drivers >/dev/null
fi
