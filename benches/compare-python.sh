#!/usr/bin/env bash
# framesift vs the Python loop a team would otherwise write (benches/python_baseline.py):
# same JPEG frames, same model, same ONNX Runtime version and intra-op thread count,
# interleaved round by round so a loaded machine slows both alike. Prints each round's
# fps, the median ratio framesift / python, and the ceiling of that ratio set by the
# time Python spends inside session.run.
#
#   benches/compare-python.sh                 # 200 frames, 9 rounds, 2 threads (about 90 s)
#   FRAMES=100 ROUNDS=3 THREADS=1 MODEL=/path/to/yolov8n-640.onnx benches/compare-python.sh
#
# Environment (all optional):
#   FRAMES   frames per run (default 200)           ROUNDS   interleaved rounds (default 9)
#   THREADS  intra-op threads, both sides (2)        MODEL    ONNX model (../shared/models/yolov8n-320.onnx)
#   VENV     Python venv (target/pybench-venv)       WORK     scratch dir (target/pybench)
#   INTERP   python letterbox resize: linear (cv2.INTER_LINEAR, default) or area
#   PY_SPINNING  python's ORT intra-op spinning: default (ORT's, on), on, or off (as
#            framesift's default [model] intra_spinning = false)
#   FRAMESIFT  framesift binary (target/release/framesift; built if missing, or always with REBUILD=1)
#   ORT_DYLIB_PATH  libonnxruntime.so for framesift (default: scripts/setup.sh installs the
#            system packages this needs and fetches ORT into target/ort/<arch>/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

FRAMES=${FRAMES:-200}
ROUNDS=${ROUNDS:-9}
THREADS=${THREADS:-2}
INTERP=${INTERP:-linear}
PY_SPINNING=${PY_SPINNING:-default}
MODEL=${MODEL:-$root/../shared/models/yolov8n-320.onnx}
VENV=${VENV:-$root/target/pybench-venv}
WORK=${WORK:-$root/target/pybench}
FRAMESIFT=${FRAMESIFT:-$root/target/release/framesift}
say() { echo "compare-python: $*" >&2; }

# System packages (python3-venv among them) and ONNX Runtime, as for the build.
if [[ -z ${ORT_DYLIB_PATH:-} ]]; then
    ORT_DYLIB_PATH=$(scripts/setup.sh | tail -n 1)
fi
export ORT_DYLIB_PATH

# Pinned so both sides run the same ONNX Runtime (framesift loads 1.31.1 from the
# official wheel, see cross/fetch-ort.sh).
PY_PINS=(onnxruntime==1.31.1 opencv-python-headless==5.0.0.93 numpy==2.4.6)

[[ -f $MODEL ]] || { say "model $MODEL not found (set MODEL)"; exit 1; }
[[ -f $ORT_DYLIB_PATH ]] || { say "ONNX Runtime library $ORT_DYLIB_PATH not found (unset ORT_DYLIB_PATH to fetch it)"; exit 1; }

# (a) Python environment.
if ! "$VENV/bin/python" -c 'import onnxruntime, cv2, numpy' 2>/dev/null; then
    say "creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "${PY_PINS[@]}"
fi
py="$VENV/bin/python"

# framesift binary.
if [[ ! -x $FRAMESIFT || ${REBUILD:-0} == 1 ]]; then
    say "building framesift (release)"
    cargo build --release --locked -p framesift --bin framesift
fi

# (b) Frames: synthetic store scenes, 1280x720, re-encoded as JPEG q90 (a typical MJPEG
# camera; `framesift synth` itself writes q95).
frames="$WORK/frames-$FRAMES"
if [[ ! -f $frames/.done ]]; then
    rm -rf "$frames" "$WORK/synth-$FRAMES"
    say "generating $FRAMES frames"
    "$FRAMESIFT" synth --out "$WORK/synth-$FRAMES" --frames "$FRAMES" --split store --seed 5 \
        --width 1280 --height 720 >&2
    mkdir -p "$frames"
    "$py" - "$WORK/synth-$FRAMES/images" "$frames" <<'EOF'
import os, sys, cv2
src, dst = sys.argv[1:3]
for name in sorted(os.listdir(src)):
    img = cv2.imread(os.path.join(src, name))
    cv2.imwrite(os.path.join(dst, name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
EOF
    rm -rf "$WORK/synth-$FRAMES"
    touch "$frames/.done"
fi

# (d) framesift config: only the thread count differs from the defaults.
config="$WORK/framesift-threads-$THREADS.toml"
printf '[model]\nintra_threads = %s\n' "$THREADS" >"$config"

run_python() {
    "$py" "$root/benches/python_baseline.py" --frames-dir "$frames" --model "$MODEL" \
        --threads "$THREADS" --frames "$FRAMES" --interp "$INTERP" --spinning "$PY_SPINNING" --out-dir "$WORK/python-kept" \
        | "$py" -c 'import json,sys; r = json.load(sys.stdin); print("%.2f %.2f" % (r["fps"], r["seconds"] / r["run_seconds"]))'
}

run_framesift() {
    local spool="$WORK/framesift-spool"
    rm -rf "$spool"
    # The summary line: "frames      N acquired, N inferred in X s (Y fps)".
    "$FRAMESIFT" run --config "$config" --replay "$frames" --model "$MODEL" \
        --spool-dir "$spool" --quiet 2>/dev/null \
        | sed -n 's/.*inferred in .* s (\([0-9.]*\) fps).*/\1/p'
}

say "$FRAMES frames, $ROUNDS rounds, $THREADS intra-op threads, model $MODEL"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
py_fps=() fs_fps=() ceilings=()
for ((r = 1; r <= ROUNDS; r++)); do
    say "round $r/$ROUNDS: python"
    read -r fps ceiling < <(run_python) || true
    [[ -n ${fps:-} ]] || { say "python baseline failed"; exit 1; }
    py_fps+=("$fps") ceilings+=("$ceiling")
    say "round $r/$ROUNDS: framesift"
    fps=$(run_framesift)
    [[ -n $fps ]] || { say "framesift run failed (rerun without 2>/dev/null to see why)"; exit 1; }
    fs_fps+=("$fps")
done

echo
echo "framesift vs Python baseline: $FRAMES JPEG q90 frames 1280x720, $(basename "$MODEL"), $THREADS intra-op threads, python resize $INTERP, python ORT spinning $PY_SPINNING"
echo "  $("$py" -c 'import onnxruntime as o, cv2, numpy as n; print(f"python: onnxruntime {o.__version__}, opencv {cv2.__version__}, numpy {n.__version__}")')"
echo "  framesift: $("$FRAMESIFT" --version), $ORT_DYLIB_PATH"
echo "  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores), load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '  %-6s %12s %15s %8s %9s\n' round "python fps" "framesift fps" ratio ceiling
ratios=()
for ((i = 0; i < ROUNDS; i++)); do
    ratio=$(awk -v a="${fs_fps[i]}" -v b="${py_fps[i]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')
    ratios+=("$ratio")
    printf '  %-6s %12s %15s %8s %9s\n' $((i + 1)) "${py_fps[i]}" "${fs_fps[i]}" "$ratio" "${ceilings[i]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
echo "  median  python $(median "${py_fps[@]}") fps, framesift $(median "${fs_fps[@]}") fps, ratio framesift/python $(median "${ratios[@]}")"
echo "  ceiling = python's time per frame ÷ its time inside session.run: the ratio if framesift"
echo "  spent on each frame only what Python spends in session.run (median $(median "${ceilings[@]}"))"
