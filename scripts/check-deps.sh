#!/usr/bin/env bash
# The workspace's dependency rules (../shared/DESIGN.md, "Workspace"), checked from
# `cargo tree` on normal (non-dev) dependencies. Exit 1 with the broken rules listed.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
# Every crate `pkg` links, transitively (normal dependencies only).
links() { cargo tree -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u; }
# Only the crates `pkg` names itself.
direct() { cargo tree -p "$1" -e normal --prefix none --format '{p}' --depth 1 | tail -n +2 | awk '{print $1}' | sort -u; }

# must_not PKG HOW WHY CRATE... : fails when PKG links (HOW = links|direct) any of CRATE.
must_not() {
  local pkg=$1 how=$2 why=$3; shift 3
  local deps bad=()
  deps=$($how "$pkg")
  for c in "$@"; do
    if grep -qx "$c" <<<"$deps"; then bad+=("$c"); fi
  done
  if [ ${#bad[@]} -gt 0 ]; then
    echo "FAIL: $pkg $why, but it links ${bad[*]}"
    failed=1
  else
    echo "ok: $pkg $why"
  fi
}

master_crates=(kiln kiln-master kiln-web kiln-endpoint kiln-listener kiln-remote kiln-store kiln-engine kiln-config kiln-model)
must_not kiln-master links "(the core) binds no ports: no axum, no endpoint" axum hyper kiln-endpoint kiln-web
must_not kiln-web links "talks to workers only through the core: no endpoint" kiln-endpoint
must_not kiln-endpoint links "never touches the store, the engine or the config" kiln-store kiln-engine kiln-config sqlx starlark
must_not kiln-listener links "accepts connections only: none of the farm's crates, no web framework or database" \
  kiln kiln-master kiln-web kiln-endpoint kiln-remote kiln-store kiln-engine kiln-config kiln-model kiln-proto \
  axum sqlx starlark
must_not kiln-remote links "is a seam: no store, engine, endpoint or web" kiln-store kiln-engine kiln-endpoint axum sqlx
must_not kiln-worker links "links none of the master's crates, no database, web server or config engine" \
  "${master_crates[@]}" sqlx axum starlark askama
must_not kiln-daemon links "is a process's lifecycle only" kiln-proto sqlx axum starlark
must_not kiln-proto links "is the wire format only: no I/O runtime" tokio sqlx axum

# Only kiln-config names starlark itself (the others get a typed MasterConfig).
for pkg in $(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))'); do
  [ "$pkg" = kiln-config ] && continue
  if direct "$pkg" | grep -qx starlark; then
    echo "FAIL: $pkg depends on starlark directly (only kiln-config may)"
    failed=1
  fi
done
[ $failed -eq 0 ] && echo "ok: only kiln-config depends on starlark directly"
exit $failed
