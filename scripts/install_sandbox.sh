#!/usr/bin/env bash
# Install bubblewrap (bwrap), the isolation layer rewards/code.py runs untrusted code in.
# Idempotent: does nothing when bwrap is already on PATH. Needs root (or sudo) for apt-get.
set -euo pipefail

if command -v bwrap >/dev/null 2>&1; then
    echo "bubblewrap already installed: $(command -v bwrap) ($(bwrap --version))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends bubblewrap
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y bubblewrap
elif command -v apk >/dev/null 2>&1; then
    $SUDO apk add bubblewrap
else
    echo "install_sandbox.sh: no apt-get/dnf/apk found; install bubblewrap (bwrap) with your package manager" >&2
    exit 1
fi

bwrap --version
