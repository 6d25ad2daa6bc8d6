#!/usr/bin/env bash
# Make the deployable aarch64 bundle target/dist/framesift-<version>-aarch64.tar.gz.
#
#   cross/package.sh [--no-build]
#
# Builds (cross/build-aarch64.sh; a no-op when up to date) unless --no-build, fetches the
# aarch64 ONNX Runtime (cross/fetch-ort.sh), and packs, under framesift-<version>-aarch64/:
#   framesift                       the aarch64 daemon (dist profile, stripped)
#   lib/libonnxruntime.so.<v>       ONNX Runtime from the official PyPI wheel
#   lib/libonnxruntime.so           -> libonnxruntime.so.<v>
#   framesift.base.toml             `framesift config default`, as the binary prints it
#   cart.toml                       the cart's overlay (cross/cart.toml): spool dir, camera
#   models/<name>/model.onnx        the default model the binary embeds (runtime/src/infer/model.rs)
#   models/<name>/model.toml
#   framesift.service               systemd unit (Type=notify, WatchdogSec=30)
#   install.sh                      installer (DESTDIR, --no-systemctl)
#   README.md VERSION SHA256SUMS
# The version and the config come from the aarch64 binary itself, run under qemu-user.
# The tarball is reproducible for a given binary (fixed owner, order and mtime).
# Prints the tarball's path on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'package: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument '$a' (try --help)" ;;
  esac
done

target=aarch64-unknown-linux-gnu
profile=${FRAMESIFT_PROFILE:-dist}
if [ "$build" = 1 ]; then
  bin=$(cross/build-aarch64.sh | tail -n 1)
else
  bin=${CARGO_TARGET_DIR:-$root/target/cross}/$target/$profile/framesift
  [ -x "$bin" ] || die "$bin missing: run cross/build-aarch64.sh (or drop --no-build)"
fi
ort=$(cross/fetch-ort.sh aarch64 | tail -n 1)
ort_real=$(readlink -f "$ort")

command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 not found (apt-get install qemu-user)"
# -L /: the arm64 multiarch loader and libc (libc6:arm64), see cross/README.md.
run_arm() { qemu-aarch64 -L / "$@"; }

version=$(run_arm "$bin" --version | awk '{print $2}')
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "could not read the version from '$bin --version'"
name=framesift-$version-aarch64
dist=$root/target/dist
stage=$dist/$name
say "staging $name"
# The model the binary embeds as its default (runtime/src/infer/model.rs include_bytes!).
model_dir=$(sed -n 's|.*include_bytes!("\(\.\./\)*\(models/[^"]*\)/model\.onnx").*|\2|p' runtime/src/infer/model.rs | head -n 1)
[ -n "$model_dir" ] && [ -f "$model_dir/model.onnx" ] && [ -f "$model_dir/model.toml" ] ||
  die "cannot find the embedded default model (include_bytes! in runtime/src/infer/model.rs)"
rm -rf "$stage"
mkdir -p "$stage/lib" "$stage/$model_dir"

install -m 0755 "$bin" "$stage/framesift"
install -m 0644 "$ort_real" "$stage/lib/$(basename "$ort_real")"
ln -s "$(basename "$ort_real")" "$stage/lib/libonnxruntime.so"
install -m 0644 "$model_dir/model.onnx" "$model_dir/model.toml" "$stage/$model_dir/"
install -m 0644 cross/framesift.service "$stage/framesift.service"
install -m 0755 cross/install.sh "$stage/install.sh"
printf '%s\n' "$version" > "$stage/VERSION"

# The config as two files the daemon overlays: the binary's own defaults (replaced on
# every upgrade) and the cart's settings over them (installed once, never overwritten).
run_arm "$bin" config default > "$stage/framesift.base.toml"
install -m 0644 cross/cart.toml "$stage/cart.toml"
run_arm "$bin" validate "$stage/framesift.base.toml" "$stage/cart.toml" >&2 ||
  die "the bundled config does not validate"

cat > "$stage/README.md" <<EOF
# framesift $version for aarch64 Linux

On the board (Debian 12 / Ubuntu 22.04 or newer: glibc >= 2.34, systemd):

    tar xzf $name.tar.gz && cd $name
    sudo ./install.sh               # /opt/framesift, /etc/framesift/framesift.toml, user, unit
    sudoedit /etc/framesift/framesift.toml   # [[camera]] type = "v4l2", device = "/dev/video0"
    sudo /opt/framesift/framesift validate /opt/framesift/framesift.base.toml /etc/framesift/framesift.toml
    sudo systemctl start framesift && journalctl -u framesift -f

The daemon reads /opt/framesift/framesift.base.toml (every default, replaced on upgrade)
and /etc/framesift/framesift.toml over it (this cart's settings; never overwritten).
\`systemctl reload framesift\` applies the keys that can change live. Stage without
installing: \`DESTDIR=/tmp/stage ./install.sh\`. Kept frames go to /var/lib/framesift/spool.
ONNX Runtime: lib/$(basename "$ort_real") (official PyPI build); to use a vendor build,
point ORT_DYLIB_PATH (unit drop-in: \`systemctl edit framesift\`) or [model] ort_library at it.
EOF

(cd "$stage" && find . -type f | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum) > "$dist/SHA256SUMS.tmp"
mv "$dist/SHA256SUMS.tmp" "$stage/SHA256SUMS"

mtime=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
tarball=$dist/$name.tar.gz
tar -C "$dist" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -cf - "$name" | gzip -9n > "$tarball.tmp"
mv -f "$tarball.tmp" "$tarball"
size=$(stat -c %s "$tarball")
say "$tarball ($(awk -v s="$size" 'BEGIN{printf "%.1f", s/1048576}') MiB); contents:"
tar -tvzf "$tarball" | awk '{printf "  %10s  %s %s %s\n", $3, $6, $7, $8}' >&2
echo "$tarball"
