#!/usr/bin/env bash
# Seeds fuzz/corpus/decode with the golden vectors (the corpus is not committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/corpus/decode"
cp "$here"/../crates/kiln-proto/tests/golden/*.msgpack "$here/corpus/decode/"
echo "seeded $(ls "$here/corpus/decode" | wc -l) inputs into $here/corpus/decode"
