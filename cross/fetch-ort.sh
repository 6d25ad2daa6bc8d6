#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library from the official `onnxruntime` wheel on PyPI.
#
#   cross/fetch-ort.sh [x86_64|aarch64] [DEST_DIR]
#
# Puts libonnxruntime.so.<version> and a libonnxruntime.so link into DEST_DIR
# (default: target/ort/<arch>) and prints the library path. Idempotent: an existing,
# checksum-verified copy is reused. Needs python3 with pip and unzip.
set -euo pipefail

ORT_VERSION=1.31.1
arch=${1:-$(uname -m)}
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "fetch-ort: unsupported architecture '$arch' (use x86_64 or aarch64)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${2:-$root/target/ort/$arch}
lib="$dest/libonnxruntime.so.$ORT_VERSION"

if [ -s "$lib" ] && [ -s "$lib.sha256" ] && (cd "$dest" && sha256sum --status -c "$(basename "$lib").sha256"); then
  echo "$dest/libonnxruntime.so"
  exit 0
fi

mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-ort: downloading onnxruntime $ORT_VERSION ($arch) from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "manylinux_2_28_$arch" --python-version 3.11 \
  "onnxruntime==$ORT_VERSION" -d "$work" >&2
wheel=$(ls "$work"/onnxruntime-"$ORT_VERSION"-*.whl)
unzip -q -o -j "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$dest"
(cd "$dest" && sha256sum "libonnxruntime.so.$ORT_VERSION" > "libonnxruntime.so.$ORT_VERSION.sha256")
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
echo "fetch-ort: $lib" >&2
echo "$dest/libonnxruntime.so"
