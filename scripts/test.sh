#!/usr/bin/env bash
# Install everything the test suite needs (Python packages, Chromium, a C compiler), then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# Debian packages: Chromium for the browser test, a C compiler for the AMX attention kernel's tests.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
python -m pytest -q "$@"
