#!/usr/bin/env bash
# Installs Debian's `chromium` (the JavaScript client's browser test drives it headless through
# playwright-core; `npx playwright install` is not used) unless it is already there.
set -euo pipefail
if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  exit 0
fi
echo "installing chromium (headless browser for the JavaScript client's tests)..." >&2
# With its recommends (fonts among them), as the page is rendered.
APT_RECOMMENDS=1 "$(dirname "$0")/apt-install.sh" chromium
