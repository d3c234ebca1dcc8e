#!/usr/bin/env bash
# Every test suite, in the order CI runs them. Needs what .ci/run installs
# (the Buildbot venv from interop/setup.sh, musl-tools, bubblewrap, rustup targets).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n=== %s ===\n' "$*"; }

step "format and lints (cargo fmt --check, clippy -D warnings)"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "dependency rules (scripts/check-deps.sh, from cargo tree)"
bash scripts/check-deps.sh

step "unit and integration tests (cargo test)"
# The master's tests run the stock buildbot-worker from the Buildbot venv when it exists.
if [ -z "${KILN_INTEROP_VENV:-}" ] && venv=$(bash interop/setup.sh 2>/dev/null | tail -n 1) && [ -x "$venv/bin/buildbot-worker" ]; then
  export KILN_INTEROP_VENV="$venv"
fi
cargo build -p kiln-worker
cargo test --workspace

step "static worker (x86_64-unknown-linux-musl)"
cargo build --release -p kiln-worker --target x86_64-unknown-linux-musl
static_bin=target/x86_64-unknown-linux-musl/release/kiln-worker
file "$static_bin" 2>/dev/null || true
if ldd "$static_bin" 2>&1 | grep -q 'not a dynamic executable\|statically linked'; then
  echo "ok: $static_bin is static ($(du -h "$static_bin" | cut -f1))"
else
  echo "FAIL: $static_bin is not statically linked"; ldd "$static_bin" || true; exit 1
fi
"$static_bin" --version

step "other platforms type-check"
# ring (rustls' crypto) compiles C for the target: Windows uses Debian's mingw-w64 and
# FreeBSD the host gcc, but macOS needs Apple's SDK headers, which cannot be had here, so
# macOS is checked without the `tls` feature (all of the worker's own platform code).
check_target() {
  local t=$1; shift
  if ! rustup target list --installed | grep -qx "$t"; then
    echo "SKIPPED $t: its standard library is not installed (rustup target add $t failed)"; return
  fi
  if out=$(cargo check -q -p kiln-worker --target "$t" "$@" 2>&1); then
    echo "ok: $t $*"
  else
    echo "$out" | tail -20
    echo "FAIL: cargo check -p kiln-worker --target $t $*"; exit 1
  fi
}
check_target x86_64-pc-windows-gnu
check_target x86_64-unknown-freebsd
check_target x86_64-apple-darwin --no-default-features
echo "SKIPPED x86_64-apple-darwin with TLS: ring's C code needs the macOS SDK (TargetConditionals.h), not installable here"

step "fuzz the protocol decoder (60 s)"
if command -v cargo-fuzz >/dev/null && rustup toolchain list | grep -q nightly; then
  bash fuzz/seed_corpus.sh
  (cd fuzz && cargo +nightly fuzz run decode -- -max_total_time=60 2>&1 | tail -3)
else
  echo "SKIPPED: cargo-fuzz or a nightly toolchain is missing (cargo install cargo-fuzz); the property tests in crates/kiln-proto/tests ran the same checks on stable"
fi

step "interop with the real Buildbot 4.3.0"
cargo build -p kiln-worker
KILN_WORKER_BIN="$PWD/target/debug/kiln-worker" bash interop/run.sh

step "benchmarks (smoke scale)"
python3 bench/worker-stream/run.py --scale smoke
# The master workloads (W1 W2 W3 W5), Kiln and Buildbot in the same run; fails if a
# benchmark crashes or a figure is missing. The committed report is the full-scale one.
cp bench/REPORT.md /tmp/kiln-bench-report.md
bash bench/run --scale smoke
cp /tmp/kiln-bench-report.md bench/REPORT.md
# What a hostile client costs either master (big log, failed logins, stalled requests);
# fails if a probe crashes or a figure is missing, never on a missed target.
bash bench/run hostile --scale smoke --no-build

step "the README's first command (kiln quickstart: demo build, then stop)"
cargo build -p kiln -p kiln-worker
qs=$(mktemp -d)
target/debug/kiln quickstart --dir "$qs/kiln-quickstart" --port 18019 --once
rm -rf "$qs"

step "kiln-worker on a stock Buildbot master (demo/quickstart.sh, then stop)"
KILN_DEMO_WEB_PORT=18019 KILN_DEMO_WORKER_PORT=19999 bash demo/quickstart.sh --once

echo
echo "all suites passed"
