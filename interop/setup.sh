#!/usr/bin/env bash
# Creates (or reuses) the Python venv with the real Buildbot 4.3.0 used by the interop suite.
#   venv path: $KILN_INTEROP_VENV, default interop/.venv (next to this script)
# Idempotent: pip runs only when a pinned package is missing or at another version.
# Prints the venv path as its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${KILN_INTEROP_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

pins=(buildbot==4.3.0 buildbot-www==4.3.0 buildbot-worker==4.3.0 msgpack pytest)

if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv $venv" >&2
  "$python" -m venv "$venv"
fi

satisfied() {
  "$venv/bin/python" - "${pins[@]}" <<'PY'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if want and have != want:
        sys.exit(1)
PY
}

if satisfied; then
  echo "Buildbot venv up to date" >&2
else
  echo "installing ${pins[*]} into $venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 || true
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" >&2
  satisfied || { echo "setup.sh: pinned packages still missing after pip install" >&2; exit 1; }
fi
echo "$venv"
