#!/usr/bin/env bash
# Install what the delivery tests need, into target/test-servers (safe to run again: it
# skips what is there):
#   - moto_server (PyPI moto[server]): an S3-protocol server that does not check
#     signatures, in a venv;
#   - s3s-fs (crates.io): an S3-protocol server over a directory that refuses bad SigV4
#     signatures and honours If-None-Match;
#   - xfsprogs and e2fsprogs, for the power-cut tests on loop-mounted XFS and ext4 images.
# The tests find the servers there (or through FRAMESIFT_MOTO_SERVER / FRAMESIFT_S3S_FS).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/target/test-servers"
mkdir -p "$dir"
say() { printf 'setup-test-servers: %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then sudo_cmd=(sudo); else sudo_cmd=(false); fi
fi
need=()
command -v mkfs.xfs >/dev/null || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || need+=(e2fsprogs)
command -v losetup >/dev/null || [ -x /usr/sbin/losetup ] || need+=(mount)
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if [ ! -x "$dir/venv/bin/moto_server" ]; then
  say "installing moto[server] 5.2.5 into $dir/venv"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' >"$dir/pip.log" 2>&1 ||
    { cat "$dir/pip.log" >&2; exit 1; }
fi

if [ ! -x "$dir/bin/s3s-fs" ]; then
  say "building s3s-fs 0.14.1 (about a minute and a half)"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root "$dir" >"$dir/s3s.log" 2>&1 ||
    { cat "$dir/s3s.log" >&2; exit 1; }
fi
say "moto_server: $dir/venv/bin/moto_server; s3s-fs: $dir/bin/s3s-fs"
