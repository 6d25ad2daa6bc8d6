#!/usr/bin/env bash
# `framesift bench` with its upload phase delivering to a real S3-protocol server on
# loopback (s3s-fs, which checks SigV4 signatures) instead of a scratch directory.
#
#   benches/upload-phase.sh [framesift bench options, e.g. --frames 3000 --rounds 10]
#
# UPLOAD_MAX_BYTES_PER_SEC and UPLOAD_BUSY_MAX_BYTES_PER_SEC, if set, become the phase's
# [upload] max_bytes_per_sec and busy_max_bytes_per_sec (0: a full-speed drain even
# while the detector runs flat out, as it does with an unpaced camera).
# FRAMESIFT (default target/release/framesift) is the binary measured; s3s-fs comes from
# scripts/setup-test-servers.sh. On a cart the store is across the network; here the
# server shares the bench's cores, so it runs in the idle scheduling class, as the
# uploader does, to take as little from the detector as a loopback server can (what it
# still takes counts against the uploader).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
framesift=${FRAMESIFT:-target/release/framesift}
[ -x "$framesift" ] || { echo "upload-phase: $framesift not built (cargo build --release)" >&2; exit 1; }
scripts/setup-test-servers.sh
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(cross/fetch-ort.sh "$(uname -m)" | tail -n 1)}
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/data/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chrt --idle 0 target/test-servers/bin/s3s-fs --host 127.0.0.1 --port "$port" \
  --access-key bench-key --secret-key bench-secret "$work/data" >"$work/s3s.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
cat >"$work/upload.toml" <<TOML
[upload]
url = "s3://bench/frames"
endpoint_url = "http://127.0.0.1:$port"
max_bytes_per_sec = ${UPLOAD_MAX_BYTES_PER_SEC:-0}
busy_max_bytes_per_sec = ${UPLOAD_BUSY_MAX_BYTES_PER_SEC:-100000}
TOML
AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret \
  "$framesift" bench "$@" --upload-config "$work/upload.toml"
