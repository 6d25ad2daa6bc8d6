#!/usr/bin/env bash
# Quick start 2: set up and run every test — formatting, lints, unit and integration
# tests (the integration tests run the real binary with the real ONNX Runtime).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lib=$(scripts/setup.sh | tail -n 1)
export ORT_DYLIB_PATH="$lib"
# S3-protocol servers and filesystem tools for the delivery tests; with them installed
# a missing server or loop device fails the tests instead of skipping them.
scripts/setup-test-servers.sh
export FRAMESIFT_REQUIRE_SERVERS=1
# The flywheel smoke's pinned torch environment (a large download), installed while the
# Rust tests build and run.
mkdir -p target
models/flywheel/setup.sh >target/flywheel-setup.log 2>&1 &
flywheel_setup=$!
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; else echo "test: rustfmt not installed; format check skipped" >&2; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets -- -D warnings; else echo "test: clippy not installed; lint skipped" >&2; fi
# The maintainers' docs (private items included) must build without a broken link.
if rustdoc --version >/dev/null 2>&1; then RUSTDOCFLAGS="-D warnings" cargo doc -p framesift --no-deps --document-private-items --quiet; else echo "test: rustdoc not installed; doc check skipped" >&2; fi
cargo test --workspace
# benches/compare-python.sh end to end on a few frames: its venv from PyPI, the Python
# baseline and framesift on the same JPEGs, the ratio. Uses the shared benchmark model.
if [ -f ../shared/models/yolov8n-320.onnx ]; then
  FRAMESIFT=target/debug/framesift FRAMES=12 ROUNDS=1 WORK=target/pysmoke benches/compare-python.sh
else
  echo "test: ../shared/models/yolov8n-320.onnx not present; compare-python smoke skipped" >&2
fi
# The flywheel end to end on a few hundred frames (models/flywheel): capture with the real
# binary, fine-tune every arm for a few steps, evaluate, deploy round 2.
if ! wait "$flywheel_setup"; then cat target/flywheel-setup.log >&2; exit 1; fi
venv=$(tail -n 1 target/flywheel-setup.log)
"$venv/bin/python" models/flywheel/flywheel.py --smoke --framesift target/debug/framesift
"$venv/bin/python" models/flywheel/test_flywheel.py
