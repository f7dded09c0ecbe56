#!/usr/bin/env bash
# Installs what the build needs on Debian/Ubuntu: liburing-dev (headers + pkg-config file) and
# pkg-config. Does nothing when both are present. As root it runs apt-get; otherwise it uses sudo
# when sudo works without a password prompt, and else prints the exact command and fails.
set -euo pipefail

have_deps() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists liburing && [ -f /usr/include/liburing.h ]
}

if have_deps; then
    exit 0
fi

packages="liburing-dev pkg-config"
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $packages"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: liburing-dev and pkg-config are missing and apt-get is not available." >&2
    echo "Install liburing (>= 2.3) development files and pkg-config with your package manager." >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    echo "installing: $packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "installing with sudo: $packages"
    sudo -n apt-get update -qq
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
else
    echo "error: liburing-dev and pkg-config are missing. Run as root:" >&2
    echo "    sudo sh -c '$cmd'" >&2
    exit 1
fi

have_deps || { echo "error: liburing still not found after install" >&2; exit 1; }
