#!/usr/bin/env bash
# Install what framesift needs to build and run on Debian/Ubuntu, then fetch the ONNX
# Runtime library. Safe to run again: it skips what is already there.
#
#   scripts/setup.sh            system packages (when root or with sudo) + ORT for this machine
#
# Prints the path of libonnxruntime.so on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { printf 'setup: %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo); else sudo_cmd=(false); fi
fi

# System packages: a C toolchain, libclang for nokhwa's V4L2 bindings, cmake (and nasm on
# x86 for its SIMD) to build the vendored libjpeg-turbo, python3 + pip and unzip to fetch
# ONNX Runtime from its PyPI wheel, python3-venv for the Python baseline benchmark.
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
# (The -dev package's libclang.so: libclang-cpp.so, which other LLVM packages bring, is
# not what bindgen loads.)
[ -n "$(ls /usr/lib/llvm-*/lib/libclang.so 2>/dev/null | head -1)" ] || need+=(libclang-dev)
command -v cmake >/dev/null || need+=(cmake)
case "$(uname -m)" in x86_64 | i?86) command -v nasm >/dev/null || need+=(nasm) ;; esac
command -v unzip >/dev/null || need+=(unzip)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# venv for benches/compare-python.sh's onnxruntime + OpenCV baseline (Debian splits it out).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

# Rust: edition 2024 needs rustc >= 1.85; the workspace asks for 1.92. Use the
# toolchain on PATH when it is new enough, else Debian's rustc-web/cargo-web.
rust_ok() {
  command -v cargo >/dev/null && command -v rustc >/dev/null || return 1
  local v; v=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n1.92.0\n' "$v" | sort -V | head -1)" = 1.92.0 ]
}
rust_ok || need+=(rustc-web cargo-web)

if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if ! rust_ok; then
  say "no Rust toolchain >= 1.92 found (install rustup from https://rustup.rs, or Debian's rustc-web)"
  exit 1
fi

# ONNX Runtime, from the official PyPI wheel.
lib=$(cross/fetch-ort.sh "$(uname -m)")
say "ONNX Runtime: $lib"
echo "$lib"
