#!/usr/bin/env bash
# Smoke test of the aarch64 bundle on an x86_64 machine: run the packaged aarch64
# framesift under qemu-user, with the bundle's aarch64 ONNX Runtime and the real model,
# on a fixed set of synthetic frames, and check its detections against the host
# (x86_64) binary's on the same frames.
#
#   cross/smoke-aarch64.sh [--tarball FILE] [--frames N] [--keep]
#
#   --tarball FILE   bundle to test (default: build + package with cross/package.sh)
#   --frames N       frames to run on each side (default 12; ~0.2-1 s each emulated)
#   --keep           keep the work directory target/cross/smoke/run (kept anyway on failure)
# Environment:
#   HOST_FRAMESIFT   x86_64 reference binary (default: `cargo build -p framesift`, the
#                    dev-profile binary target/debug/framesift — warm after scripts/test.sh)
#   QEMU_CPU         CPU model qemu emulates (default cortex-a76, matching the fake cpuinfo)
#   SCORE_TOL BOX_TOL  tolerances: |Δscore| (default 1e-3), |Δbox| in pixels (default 0.5)
#
# Pass: every frame kept on both sides, same synthetic frame bytes, the same number of
# detections with the same classes, scores and boxes within tolerance. Exits 1 on any
# mismatch, after printing one table row per frame.
#
# Two things make ORT run under qemu-user here (see cross/README.md):
#   * `qemu-aarch64 -L /` — the arm64 multiarch glibc (libc6:arm64) for everything;
#   * an LD_PRELOAD shim (cross/fake-cpuinfo.c) that shows ORT an ARM /proc/cpuinfo
#     instead of the host's x86 one, on which ORT's CPU detection crashes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf 'smoke-aarch64: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

tarball="" frames=12 keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tarball) tarball=${2:?--tarball needs a file}; shift 2 ;;
    --frames) frames=${2:?--frames needs a number}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done
[[ "$frames" =~ ^[0-9]+$ ]] && [ "$frames" -ge 1 ] && [ "$frames" -le 1000 ] ||
  die "--frames must be 1..1000"
qemu_cpu=${QEMU_CPU:-cortex-a76}
score_tol=${SCORE_TOL:-1e-3}
box_tol=${BOX_TOL:-0.5}

for tool in qemu-aarch64 aarch64-linux-gnu-gcc python3; do
  command -v "$tool" >/dev/null || die "$tool not found (cross/build-aarch64.sh installs it)"
done
[ -e /lib/ld-linux-aarch64.so.1 ] || die "no arm64 loader at /lib/ld-linux-aarch64.so.1 (apt-get install libc6:arm64)"
[ -e /usr/lib/aarch64-linux-gnu/libstdc++.so.6 ] || die "no libstdc++.so.6 for arm64, ONNX Runtime needs it (apt-get install libstdc++6:arm64)"

# --- the bundle under test -------------------------------------------------------------
[ -n "$tarball" ] || tarball=$(cross/package.sh | tail -n 1)
[ -f "$tarball" ] || die "no bundle at $tarball"
smoke=$root/target/cross/smoke
work=$smoke/run
rm -rf "$work"
mkdir -p "$work/bundle"
tar -xzf "$tarball" -C "$work/bundle" --strip-components=1
arm_bin=$work/bundle/framesift
arm_ort=$work/bundle/lib/libonnxruntime.so
[ -x "$arm_bin" ] && [ -e "$arm_ort" ] || die "$tarball lacks framesift or lib/libonnxruntime.so"

# --- the preload shim ----------------------------------------------------------------
# LD_PRELOAD=$smoke/$LIB/fake-cpuinfo.so (literal $LIB: ld.so expands it per
# architecture) loads the shim in aarch64 processes and a no-op in x86_64 ones, so the
# variable can be inherited by anything without "cannot be preloaded" warnings.
shim=$smoke/lib/aarch64-linux-gnu/fake-cpuinfo.so
noop=$smoke/lib/x86_64-linux-gnu/fake-cpuinfo.so
if [ ! -f "$shim" ] || [ cross/fake-cpuinfo.c -nt "$shim" ]; then
  say "building $shim"
  mkdir -p "$(dirname "$shim")" "$(dirname "$noop")"
  aarch64-linux-gnu-gcc -O2 -Wall -Wextra -shared -fPIC -o "$shim" cross/fake-cpuinfo.c -ldl
  if command -v cc >/dev/null; then cc -shared -o "$noop" -x c /dev/null; fi
fi
preload="$smoke/\$LIB/fake-cpuinfo.so"

# --- the x86_64 reference ----------------------------------------------------------------
if [ -n "${HOST_FRAMESIFT:-}" ]; then
  host_bin=$HOST_FRAMESIFT
else
  say "building the host reference binary (cargo build -p framesift)"
  cargo build --locked -q -p framesift --bin framesift >&2
  host_bin=${CARGO_TARGET_DIR:-$root/target}/debug/framesift
fi
[ -x "$host_bin" ] || die "host binary $host_bin missing"
host_ort=$(cross/fetch-ort.sh x86_64 | tail -n 1)

# --- config: keep every frame, one scene per frame ----------------------------------------
cat > "$work/smoke.toml" <<EOF
[model]
intra_threads = 1

[[camera]]
name = "smoke"
type = "synthetic"
seed = 7
split = "store"
width = 640
height = 360
fps = 0.0
frames_per_scene = 1

[pipeline]
queue_depth = 2
keeper_queue = 64

[policy]
min_value = 0.0

[keep]
capacity = $frames
window_secs = 86400.0
# No budget and no near-duplicate suppression: every frame is written, to compare.
target_rate = 0.0
dedupe_distance = 0.0
EOF
"$host_bin" validate "$work/smoke.toml" >&2 || die "smoke config rejected by $host_bin"

arm_version=$(qemu-aarch64 -L / "$arm_bin" --version)
host_version=$("$host_bin" --version)
[ "$arm_version" = "$host_version" ] ||
  say "warning: comparing $arm_version (aarch64) with $host_version (host)"

say "x86_64: $frames frames with $host_bin"
t0=$(date +%s.%N)
NO_COLOR=1 ORT_DYLIB_PATH=$host_ort "$host_bin" run --config "$work/smoke.toml" \
  --max-frames "$frames" --spool-dir "$work/x86_64" > "$work/x86_64.log" 2>&1 ||
  { cat "$work/x86_64.log" >&2; die "host run failed (logs in $work)"; }
t1=$(date +%s.%N)
say "aarch64 (qemu-aarch64 -cpu $qemu_cpu): $frames frames with the bundle's framesift"
rc=0
timeout $((120 + frames * 30)) qemu-aarch64 -L / -cpu "$qemu_cpu" \
  -E LD_PRELOAD="$preload" -E ORT_DYLIB_PATH="$arm_ort" -E NO_COLOR=1 \
  "$arm_bin" run --config "$work/smoke.toml" --max-frames "$frames" \
  --spool-dir "$work/aarch64" > "$work/aarch64.log" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
  cat "$work/aarch64.log" >&2
  [ "$rc" = 124 ] && die "emulated aarch64 run timed out (logs in $work)"
  die "emulated aarch64 run failed with exit $rc (logs in $work)"
fi
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$frames" 'BEGIN{
  printf "smoke-aarch64: run time x86_64 %.1f s, aarch64 under qemu %.1f s (%.2f s/frame)\n", b-a, c-b, (c-b)/n }' >&2
grep -E '^ *(inference|frames|kept) ' "$work/aarch64.log" | sed 's/^/  aarch64 /' >&2 || true

# --- compare -------------------------------------------------------------------------------
rc=0
python3 - "$work/x86_64" "$work/aarch64" "$frames" "$score_tol" "$box_tol" <<'PY' || rc=$?
import glob, json, os, sys

x86_dir, arm_dir, frames, score_tol, box_tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])

def load(d):
    out = {}
    for p in glob.glob(os.path.join(d, "*.json")):
        with open(p) as f:
            s = json.load(f)
        out[s["seq"]] = s
    return out

x86, arm = load(x86_dir), load(arm_dir)
seqs = sorted(set(x86) | set(arm))
rows, failed = [], 0
for seq in seqs:
    a, b = x86.get(seq), arm.get(seq)
    if a is None or b is None:
        rows.append((seq, "-", "-" if a is None else len(a["detections"]),
                     "-" if b is None else len(b["detections"]), "-", "-",
                     "missing on " + ("x86_64" if a is None else "aarch64")))
        failed += 1
        continue
    same_frame = a["image"]["sha256"] == b["image"]["sha256"]
    da, db = a["detections"], b["detections"]
    problems = [] if same_frame else ["frame bytes differ"]
    if len(da) != len(db):
        problems.append("count %d vs %d" % (len(da), len(db)))
    # Pair each x86 detection with the closest unpaired aarch64 one of the same class
    # (near-equal scores may swap order between the two builds).
    unused = list(range(len(db)))
    max_ds = max_db = 0.0
    for d in da:
        best, best_key = None, None
        for j in unused:
            e = db[j]
            if e["class_id"] != d["class_id"]:
                continue
            key = max(abs(x - y) for x, y in zip(d["bbox"], e["bbox"]))
            if best_key is None or key < best_key:
                best, best_key = j, key
        if best is None:
            problems.append("class %d unmatched" % d["class_id"])
            continue
        unused.remove(best)
        e = db[best]
        max_ds = max(max_ds, abs(d["score"] - e["score"]))
        max_db = max(max_db, best_key)
    if unused and len(da) == len(db):
        problems.append("classes differ")
    if max_ds > score_tol:
        problems.append("score Δ %.2g > %g" % (max_ds, score_tol))
    if max_db > box_tol:
        problems.append("box Δ %.3g px > %g" % (max_db, box_tol))
    if problems:
        failed += 1
    rows.append((seq, "same" if same_frame else "DIFF", len(da), len(db),
                 "%.1e" % max_ds, "%.1e" % max_db, "; ".join(problems) or "ok"))
if len(seqs) < frames:
    failed += frames - len(seqs)
    print("only %d of %d frames were kept on either side" % (len(seqs), frames))

hdr = ("seq", "frame", "dets x86_64", "dets aarch64", "max |Δscore|", "max |Δbox| px", "result")
widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
fmt = "  ".join("%%-%ds" % w for w in widths)
print(fmt % hdr)
print(fmt % tuple("-" * w for w in widths))
for r in rows:
    print(fmt % tuple(str(c) for c in r))
ok = max(frames, len(seqs)) - failed
print("smoke-aarch64: %d frames match, %d differ (tolerance: score %g, box %g px)" % (ok, failed, score_tol, box_tol))
sys.exit(1 if failed else 0)
PY
if [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
  rm -rf "$work"
else
  say "spools, logs and config kept in $work"
fi
exit "$rc"
