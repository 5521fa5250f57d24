#!/usr/bin/env bash
# Debian's chromium for the control panel's browser test (tests/panel/test_browser.py drives it
# with Playwright at /usr/bin/chromium; `playwright install` is never run). Installed as root
# if missing; every step bounded in time.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -qq
timeout 1200 apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
