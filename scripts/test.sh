#!/usr/bin/env bash
# Install everything the test suite needs (Python packages, Debian's Chromium for the browser test), then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/test_browser.py needs Chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
python -m pytest -q "$@"
