#!/usr/bin/env bash
# Cross-compile a release framesift binary for aarch64-unknown-linux-gnu on an x86_64
# Debian 12 machine, without rustup targets (which need a download this machine can't
# make): Debian's rustc-web ships an aarch64 standard library as a multiarch package.
#
#   cross/build-aarch64.sh [--no-install]
#
# Installs (idempotently, when missing) the arm64 multiarch packages it needs, then builds
# with the `dist` profile into target/cross/ so the host build cache in target/release and
# target/debug is left alone. Prints the path of the stripped binary on its last line.
#
# Environment:
#   FRAMESIFT_PROFILE   cargo profile to build (default: dist; defined on the command line
#                       below when the workspace Cargo.toml has no [profile.dist])
#   CARGO_TARGET_DIR    default: target/cross
#   CARGO_BUILD_JOBS    default: cargo's (all cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'build-aarch64: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

install=1
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (try --help)" ;;
  esac
done

target=aarch64-unknown-linux-gnu
profile=${FRAMESIFT_PROFILE:-dist}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cross}

# --- packages -----------------------------------------------------------------------
# rustc-web               Debian's rustc (1.96 in bookworm-security) — new enough for the
#                         workspace's rust-version, and it has an aarch64 std package:
# libstd-rust-web-dev:arm64  the aarch64 standard library (/usr/lib/rustlib/aarch64-...)
# gcc-aarch64-linux-gnu   the linker driver; Debian's cross gcc searches the multiarch
#                         dirs (/usr/lib/aarch64-linux-gnu), so no separate sysroot
# libc6-dev:arm64         crt files + libc/libm/libpthread to link against; it also pulls
#                         linux-libc-dev:arm64 (/usr/include/aarch64-linux-gnu/asm), which
#                         bindgen needs for nokhwa's <linux/videodev2.h> bindings
# libclang-dev            libclang for bindgen (v4l2-sys-mit's build script)
# cmake                   builds the vendored libjpeg-turbo (turbojpeg-sys) for aarch64
# qemu-user               qemu-aarch64, for the smoke test and emulated tests
# python3-pip unzip       cross/fetch-ort.sh (ONNX Runtime from its PyPI wheel)
need_pkgs() {
  local p missing=()
  for p in rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6:arm64 \
           libc6-dev:arm64 linux-libc-dev:arm64 libclang-dev cmake qemu-user python3-pip unzip; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  printf '%s\n' "${missing[@]}"
}
if [ "$install" = 1 ]; then
  mapfile -t missing < <(need_pkgs | sed '/^$/d')
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=()
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
      sudo_cmd=(sudo)
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      "${sudo_cmd[@]}" dpkg --add-architecture arm64
    fi
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

# --- toolchain ------------------------------------------------------------------------
RUSTC=${RUSTC:-/usr/bin/rustc}
[ -x "$RUSTC" ] || die "$RUSTC not found (apt-get install rustc-web, or run without --no-install)"
sysroot=$("$RUSTC" --print sysroot)
[ -d "$sysroot/lib/rustlib/$target/lib" ] ||
  die "$RUSTC has no $target standard library (apt-get install libstd-rust-web-dev:arm64)"
command -v aarch64-linux-gnu-gcc >/dev/null || die "aarch64-linux-gnu-gcc not found (apt-get install gcc-aarch64-linux-gnu)"
export RUSTC
# Any cargo >= 1.85 drives Debian's rustc: rustup's, else Debian's cargo-web.
if command -v cargo >/dev/null; then
  cargo=(cargo)
elif [ -x /usr/bin/cargo ]; then
  cargo=(/usr/bin/cargo)
else
  die "no cargo found (install rustup, or apt-get install cargo-web)"
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# bindgen passes --target=aarch64-unknown-linux-gnu to libclang, which then finds the
# arm64 multiarch headers (/usr/include/aarch64-linux-gnu) by itself; no --sysroot needed.
# rustup's proxies may export RUSTUP_TOOLCHAIN; it does not matter with RUSTC set.

# --- profile ----------------------------------------------------------------------------
# `dist`: release + fat LTO + stripped symbols. panic stays "unwind": the camera source
# wraps nokhwa/v4l calls in catch_unwind, and the pipeline reports a panicked thread and
# still flushes the keep buffer — both need unwinding.
profile_args=()
if [ "$profile" = dist ] && ! grep -q '^\[profile\.dist\]' Cargo.toml; then
  profile_args=(--config 'profile.dist.inherits="release"'
                --config 'profile.dist.lto="fat"'
                --config 'profile.dist.codegen-units=1'
                --config 'profile.dist.strip="symbols"'
                --config 'profile.dist.debug=false'
                --config 'profile.dist.panic="unwind"')
fi

say "$("$RUSTC" --version) ($RUSTC), $("${cargo[@]}" --version)"
say "building framesift for $target, profile $profile, into $CARGO_TARGET_DIR"
start=$(date +%s)
"${cargo[@]}" "${profile_args[@]}" build --locked -p framesift --bin framesift \
  --target "$target" --profile "$profile"
secs=$(( $(date +%s) - start ))

bin="$CARGO_TARGET_DIR/$target/$profile/framesift"
[ -x "$bin" ] || die "build finished but $bin is missing"
case "$(od -An -tx1 -j18 -N2 "$bin" | tr -d ' ')" in
  b700) ;;  # e_machine = EM_AARCH64 (183)
  *) die "$bin is not an aarch64 ELF" ;;
esac
size=$(stat -c %s "$bin")
say "built in ${secs}s: $bin ($size bytes, $(awk -v s="$size" 'BEGIN{printf "%.2f", s/1048576}') MiB)"
echo "$bin"
