#!/usr/bin/env bash
# Interop suite: the real Buildbot 4.3.0 master with kiln-worker and with the stock
# buildbot-worker, compared through the REST API. Everything stays on 127.0.0.1.
#
#   KILN_WORKER_BIN       kiln-worker binary (default: target/debug/kiln-worker)
#   KILN_MASTER_BIN       kiln master binary (default: target/debug/kiln)
#   KILN_INTEROP_WORKERS  workers under test, comma separated (default: kiln,stock)
#   KILN_INTEROP_VENV     venv with Buildbot (default: interop/.venv, made by setup.sh)
#   KILN_INTEROP_KEEP=1   keep the temporary master/worker directories
# Extra arguments go to pytest (e.g. -k lifecycle, -x). Exit code = pytest's.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$(bash "$here/setup.sh" | tail -n 1)" || { echo "interop/setup.sh failed" >&2; exit 2; }
export KILN_WORKER_BIN="${KILN_WORKER_BIN:-$here/../target/debug/kiln-worker}"
export KILN_MASTER_BIN="${KILN_MASTER_BIN:-$here/../target/debug/kiln}"   # test_kiln_master.py
cd "$here"
"$venv/bin/python" -m pytest -v -p no:logging test_interop.py test_lifecycle.py test_kiln_master.py "$@"
exit $?
