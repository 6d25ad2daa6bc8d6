#!/usr/bin/env bash
# Quick start 1: set up, build, and run framesift on its embedded default — the
# built-in detector on a synthetic cart camera — for 300 frames. Kept frames land in
# ./framesift-spool (image + JSON sidecar each).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lib=$(scripts/setup.sh | tail -n 1)
cargo build --release --bin framesift
export ORT_DYLIB_PATH="$lib"
exec target/release/framesift run --max-frames "${FRAMES:-300}" "$@"
