#!/usr/bin/env bash
# Run the framesift crate's tests for aarch64 under qemu-user (slow; not part of CI).
#
#   cross/test-aarch64.sh [--it] [--binfmt] [-- CARGO_TEST_ARGS...]
#
#   (default)   unit tests: cargo test --target aarch64-unknown-linux-gnu -p framesift --lib
#   --it        also the integration tests (--test it). They spawn the framesift binary,
#               which the kernel can only run through binfmt_misc: without it every
#               test that starts the binary fails with exit status 127.
#   --binfmt    (root) register qemu-aarch64 with binfmt_misc for the duration of the
#               run, and remove the registration afterwards
# Same toolchain as cross/build-aarch64.sh (run that first: it installs the packages);
# builds the dev/test profile into target/cross. A cold build takes ~20 min on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'test-aarch64: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

it=0 binfmt=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --it) it=1; shift ;;
    --binfmt) binfmt=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

export RUSTC=${RUSTC:-/usr/bin/rustc}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cross}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
[ -d "$("$RUSTC" --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu" ] ||
  die "no aarch64 std for $RUSTC: run cross/build-aarch64.sh first"

# The /proc/cpuinfo shim (see cross/fake-cpuinfo.c), per-architecture via ld.so's $LIB.
smoke=$root/target/cross/smoke
shim=$smoke/lib/aarch64-linux-gnu/fake-cpuinfo.so
noop=$smoke/lib/x86_64-linux-gnu/fake-cpuinfo.so
if [ ! -f "$shim" ] || [ cross/fake-cpuinfo.c -nt "$shim" ] || [ ! -f "$noop" ]; then
  mkdir -p "$(dirname "$shim")" "$(dirname "$noop")"
  aarch64-linux-gnu-gcc -O2 -Wall -Wextra -shared -fPIC -o "$shim" cross/fake-cpuinfo.c -ldl
  cc -shared -o "$noop" -x c /dev/null
fi
preload="$smoke/\$LIB/fake-cpuinfo.so"
qemu_cpu=${QEMU_CPU:-cortex-a76}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L / -cpu $qemu_cpu -E LD_PRELOAD=$preload"
# For binaries the tests spawn (through binfmt_misc, so without the runner's flags).
export QEMU_LD_PREFIX=/ QEMU_CPU=$qemu_cpu
ORT_DYLIB_PATH=$(cross/fetch-ort.sh aarch64 | tail -n 1)
export ORT_DYLIB_PATH

registered=0 mounted=0
cleanup() {
  if [ "$registered" = 1 ]; then
    echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64 && say "binfmt_misc registration removed"
  fi
  if [ "$mounted" = 1 ]; then umount /proc/sys/fs/binfmt_misc || true; fi
}
trap cleanup EXIT
if [ "$binfmt" = 1 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ "$(id -u)" = 0 ] || die "--binfmt needs root"
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    mounted=1
  fi
  # Magic and mask for aarch64 ELF executables and PIEs, as qemu's qemu-binfmt-conf.sh.
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:' \
    > /proc/sys/fs/binfmt_misc/register
  registered=1
  say "registered qemu-aarch64 with binfmt_misc"
fi
if [ "$it" = 1 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  say "warning: binfmt_misc has no qemu-aarch64 entry; tests that spawn framesift will fail (use --binfmt)"
fi

targets=(--lib)
[ "$it" = 1 ] && targets+=(--test it)
cargo test --locked --target aarch64-unknown-linux-gnu -p framesift "${targets[@]}" "${extra[@]}"
