#!/usr/bin/env bash
# The GPU check on a CUDA machine that has Python, torch and transformers but no internet.
#
#   scripts/gpu_check.sh WHEELS_DIR [python -m core.gpu_check flags, e.g. --device cuda:1 --checks relight,parity]
#
# WHEELS_DIR holds the wheels of requirements.txt, made beforehand on any machine that reaches the package index:
#   pip download -r requirements.txt -d wheels
# (for another Python version or platform add --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all:).
# Packages already installed are kept (the machine's own CUDA torch and transformers above all); only missing
# requirements are installed, from WHEELS_DIR alone, with the installed torch and transformers pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REQUIREMENTS=${REQUIREMENTS:-requirements.txt}
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: scripts/gpu_check.sh WHEELS_DIR [gpu check flags]  (make WHEELS_DIR with: pip download -r requirements.txt -d wheels)" >&2
    exit 2
fi
WHEELS=$1
shift
if [ ! -d "$WHEELS" ]; then
    echo "error: wheel folder $WHEELS does not exist (make it with: pip download -r requirements.txt -d $WHEELS)" >&2
    exit 2
fi

# Requirement lines whose distribution is not installed (any version counts as installed).
missing=$("$PYTHON" - "$REQUIREMENTS" <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name = re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(line)
PY
)
if [ -n "$missing" ]; then
    constraints=$(mktemp)
    trap 'rm -f "$constraints"' EXIT
    "$PYTHON" - > "$constraints" <<'PY'
from importlib.metadata import PackageNotFoundError, version

for name in ("torch", "transformers"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PY
    echo "installing from $WHEELS:" $missing >&2
    # shellcheck disable=SC2086 # one requirement per word
    if ! "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -c "$constraints" $missing; then
        echo "error: could not install $(echo $missing | tr '\n' ' ')from $WHEELS; refresh it with: pip download -r requirements.txt -d $WHEELS" >&2
        exit 3
    fi
fi
exec "$PYTHON" -m core.gpu_check "$@"
