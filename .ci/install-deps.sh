#!/usr/bin/env bash
# Installs what the build and the tests need on Debian/Ubuntu. Required: liburing-dev (headers +
# pkg-config file) and pkg-config. For the tests, where they can be had: promtool (Debian's
# `prometheus`), which lints the metrics exposition (its test skips, saying so, without it).
# Does nothing when everything is present. As root it runs apt-get; otherwise it uses sudo when
# sudo works without a password prompt, and else prints the exact command (and fails only for
# what is required).
set -euo pipefail

have_required() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists liburing && [ -f /usr/include/liburing.h ]
}
have_test_tools() {
    command -v promtool >/dev/null 2>&1
}

if have_required && have_test_tools; then
    exit 0
fi

required="liburing-dev pkg-config"
tools="prometheus"
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $required && apt-get install -y --no-install-recommends $tools"

if ! command -v apt-get >/dev/null 2>&1; then
    have_required && exit 0
    echo "error: liburing-dev and pkg-config are missing and apt-get is not available." >&2
    echo "Install liburing (>= 2.3) development files and pkg-config with your package manager." >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    have_required && { echo "note: promtool is missing; its test will skip (as root: $cmd)" >&2; exit 0; }
    echo "error: liburing-dev and pkg-config are missing. Run as root:" >&2
    echo "    sudo sh -c '$cmd'" >&2
    exit 1
fi

echo "installing what is missing of: $required $tools"
$sudo apt-get update -qq
if ! have_required; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $required
fi
if ! have_test_tools; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $tools \
        || echo "note: $tools could not be installed; the promtool test will skip" >&2
fi

have_required || { echo "error: liburing still not found after install" >&2; exit 1; }
