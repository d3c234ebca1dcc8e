#!/usr/bin/env bash
# Runs Kiln's worker for real: a stock Buildbot 4.3 master on 127.0.0.1 with its web UI,
# a kiln-worker attached to it, and one demo build. Ctrl-C stops everything.
#   --once   stop after the demo build instead of waiting for Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
once=0; [ "${1:-}" = "--once" ] && once=1
work=$root/demo/work
web_port=${KILN_DEMO_WEB_PORT:-8010}
worker_port=${KILN_DEMO_WORKER_PORT:-9989}
export KILN_DEMO_WEB_PORT=$web_port KILN_DEMO_WORKER_PORT=$worker_port

echo "==> Buildbot 4.3.0 (the master, from PyPI) and kiln-worker (built here)"
venv=$(bash interop/setup.sh | tail -n 1)
cargo build --release -q -p kiln-worker
kw=$root/target/release/kiln-worker

stop_all() {
  "$kw" stop "$work/worker" >/dev/null 2>&1 || true
  "$venv/bin/buildbot" stop "$work/master" >/dev/null 2>&1 || true
}
trap stop_all EXIT
stop_all
rm -rf "$work"; mkdir -p "$work"

echo "==> master in $work/master"
"$venv/bin/buildbot" create-master -q "$work/master"
cp demo/master.cfg "$work/master/master.cfg"
"$venv/bin/buildbot" start "$work/master" >/dev/null

echo "==> kiln-worker in $work/worker"
# As root (a container, say) the demo allows root builds; a real worker runs as its own user.
if [ "$(id -u)" = 0 ]; then root_ok=(--allow-root); else root_ok=(); fi
"$kw" create-worker -q "${root_ok[@]}" "$work/worker" "127.0.0.1:$worker_port" demo-worker demo-pass
echo "Kiln demo worker <demo@localhost.invalid>" > "$work/worker/info/admin"
"$kw" start "$work/worker"

api=http://127.0.0.1:$web_port/api/v2
echo "==> forcing a build"
curl -fsS -X POST -H 'Content-Type: application/json' \
  -d '{"jsonrpc":"2.0","method":"force","id":1,"params":{"builderid":"1","reason":"kiln demo"}}' \
  "$api/forceschedulers/force" >/dev/null
for _ in $(seq 1 120); do
  complete=$(curl -fsS "$api/builds?builderid=1&order=-buildid&limit=1" | python3 -c 'import json,sys; b=json.load(sys.stdin)["builds"]; print(b[0]["complete"] if b else False)')
  [ "$complete" = "True" ] && break
  sleep 1
done
curl -fsS "$api/builds?builderid=1&order=-buildid&limit=1" | python3 -c '
import json, sys
b = json.load(sys.stdin)["builds"][0]
names = {0: "SUCCESS", 1: "WARNINGS", 2: "FAILURE", 3: "SKIPPED", 4: "EXCEPTION", 5: "RETRY", 6: "CANCELLED"}
print("build %d: %s (%s)" % (b["number"], names.get(b["results"], b["results"]), b["state_string"]))
sys.exit(0 if b["results"] == 0 else 1)'
echo
echo "Web UI: http://127.0.0.1:$web_port/#/builders/1"
if [ $once = 1 ]; then exit 0; fi
echo "Press Ctrl-C to stop the master and the worker."
while sleep 3600; do :; done
