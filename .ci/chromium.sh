#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright's own browser download does not work here).
# Installs it when missing and apt is usable; otherwise says the browser tests will be skipped.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "note: /usr/bin/chromium is missing and apt needs root; browser tests will be skipped (apt-get install chromium)"
    exit 0
  fi
fi
echo "installing Debian's chromium for the browser tests..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
