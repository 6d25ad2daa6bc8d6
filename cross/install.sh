#!/usr/bin/env bash
# Install framesift from this unpacked bundle on an aarch64 Linux board (systemd).
#
#   sudo ./install.sh [--no-systemctl] [--start] [--force]
#   DESTDIR=/tmp/stage ./install.sh          # stage into a directory (no root needed)
#
# Puts:
#   /opt/framesift/framesift                    the daemon
#   /opt/framesift/lib/libonnxruntime.so*       ONNX Runtime (official PyPI build)
#   /opt/framesift/models/<name>/               the default model (also built into the binary)
#   /opt/framesift/framesift.base.toml          every default (replaced on upgrade)
#   /etc/framesift/framesift.toml               this cart's settings over it — only if none
#                                               exists yet
#   /etc/systemd/system/framesift.service       the unit (replaced on upgrade)
#   /etc/modules-load.d/framesift.conf          loads videodev at boot (when the kernel has it)
# creates the system user `framesift` (group framesift; the unit adds group video), then
# `systemctl daemon-reload` and `systemctl enable framesift`; a running framesift is
# restarted onto the new version. It does not start a stopped service unless --start:
# edit /etc/framesift/framesift.toml (cameras!) first.
#
# Options:
#   --no-systemctl   do not call systemctl (images being built, containers)
#   --start          start (or restart) the service at the end
#   --force          install on a machine that is not aarch64
# DESTDIR=DIR       install under DIR; implies --no-systemctl and skips creating the user.
# Safe to run again: an existing config is never overwritten.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { printf 'install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

systemctl_ok=1 start=0 force=0
for a in "$@"; do
  case "$a" in
    --no-systemctl) systemctl_ok=0 ;;
    --start) start=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) die "unknown option '$a' (try --help)" ;;
  esac
done

destdir=${DESTDIR:-}
destdir=${destdir%/}
if [ -n "$destdir" ]; then
  systemctl_ok=0
  mkdir -p "$destdir"
  destdir=$(cd "$destdir" && pwd)
else
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0), or set DESTDIR to stage the files"
  if [ "$force" = 0 ] && [ "$(uname -m)" != aarch64 ]; then
    die "this bundle is for aarch64, this machine is $(uname -m) (--force to install anyway)"
  fi
fi
if [ "$systemctl_ok" = 1 ] && ! command -v systemctl >/dev/null; then
  say "systemctl not found: installing without enabling the service"
  systemctl_ok=0
elif [ "$systemctl_ok" = 1 ] && [ ! -d /run/systemd/system ]; then
  say "systemd is not running here (container, chroot): installing without enabling the service"
  systemctl_ok=0
fi

# --- check the bundle -----------------------------------------------------------------
for f in framesift lib/libonnxruntime.so framesift.base.toml cart.toml framesift.service models; do
  [ -e "$here/$f" ] || die "bundle incomplete: $f missing in $here"
done
if [ -f "$here/SHA256SUMS" ]; then
  (cd "$here" && sha256sum --quiet -c SHA256SUMS) || die "bundle checksums do not match (SHA256SUMS)"
fi

opt=$destdir/opt/framesift
etc=$destdir/etc/framesift
unitdir=$destdir/etc/systemd/system

# Atomic replace: copy beside the target, then rename over it, so a running daemon keeps
# its (now unlinked) old file and never sees a half-written one.
put() { # put MODE SRC DEST
  local mode=$1 src=$2 dest=$3 tmp
  mkdir -p "$(dirname "$dest")"
  tmp="$dest.new.$$"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
}

# --- files ----------------------------------------------------------------------------
was_active=0
if [ "$systemctl_ok" = 1 ] && systemctl is-active --quiet framesift.service; then
  was_active=1
fi

say "installing to $opt"
put 0755 "$here/framesift" "$opt/framesift"
lib_real=$(basename "$(readlink -f "$here/lib/libonnxruntime.so")")
put 0644 "$here/lib/$lib_real" "$opt/lib/$lib_real"
ln -sfn "$lib_real" "$opt/lib/libonnxruntime.so"
(cd "$here" && find models -type f) | while IFS= read -r f; do
  put 0644 "$here/$f" "$opt/$f"
done
put 0644 "$here/framesift.base.toml" "$opt/framesift.base.toml"
[ -f "$here/README.md" ] && put 0644 "$here/README.md" "$opt/README.md"
[ -f "$here/VERSION" ] && put 0644 "$here/VERSION" "$opt/VERSION"

mkdir -p "$etc"
if [ -e "$etc/framesift.toml" ]; then
  say "keeping the existing $etc/framesift.toml (the defaults under it: $opt/framesift.base.toml)"
else
  put 0644 "$here/cart.toml" "$etc/framesift.toml"
  say "wrote $etc/framesift.toml"
fi

put 0644 "$here/framesift.service" "$unitdir/framesift.service"
# DeviceAllow=char-video4linux resolves the V4L2 major number when the service starts;
# make sure the videodev module is loaded by then even if the camera is plugged in later.
# Only where the kernel has it (else systemd-modules-load would fail at every boot).
if [ -z "$destdir" ] && command -v modinfo >/dev/null && modinfo videodev >/dev/null 2>&1; then
  mkdir -p /etc/modules-load.d
  printf '# framesift: V4L2 core, so DeviceAllow=char-video4linux resolves at service start\nvideodev\n' \
    > /etc/modules-load.d/framesift.conf
elif [ -z "$destdir" ]; then
  say "warning: this kernel has no videodev module (V4L2): only synthetic/replay cameras will work"
fi

# --- user -------------------------------------------------------------------------------
if [ -n "$destdir" ]; then
  say "DESTDIR set: not creating the user 'framesift' (run install.sh on the board for that)"
elif id framesift >/dev/null 2>&1; then
  say "user framesift exists"
else
  nologin=$(command -v nologin || echo /usr/sbin/nologin)
  useradd --system --user-group --home-dir /var/lib/framesift --no-create-home \
    --shell "$nologin" --comment "framesift daemon" framesift
  say "created system user framesift"
fi
if [ -z "$destdir" ] && ! getent group video >/dev/null; then
  say "warning: no group 'video' on this system; the unit's SupplementaryGroups=video will fail — create it (groupadd --system video) or edit the unit"
fi

# --- check the installed binary runs here -------------------------------------------
if [ -z "$destdir" ]; then
  "$opt/framesift" validate "$opt/framesift.base.toml" "$etc/framesift.toml" >&2 ||
    say "warning: $etc/framesift.toml does not validate; fix it before starting the service"
fi

# --- systemd ------------------------------------------------------------------------------
if [ "$systemctl_ok" = 1 ]; then
  systemctl daemon-reload
  systemctl enable framesift.service
  if [ "$start" = 1 ] || [ "$was_active" = 1 ]; then
    systemctl restart framesift.service
    say "framesift (re)started: journalctl -u framesift -f"
  else
    say "enabled; start it with: systemctl start framesift   (after editing $etc/framesift.toml)"
  fi
else
  say "systemctl skipped; on the board: systemctl daemon-reload && systemctl enable --now framesift"
fi
say "done: framesift $(cat "$here/VERSION" 2>/dev/null || echo '(unknown version)')"
