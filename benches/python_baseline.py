#!/usr/bin/env python3
"""The Python loop a team would write instead of framesift, for compare-python.sh.

Per frame, in one thread (plus ONNX Runtime's intra-op threads):
  cv2.imread (read + JPEG decode)
  -> letterbox: cv2.resize INTER_LINEAR + cv2.copyMakeBorder(114), BGR->RGB, /255, CHW f32
  -> session.run (onnxruntime, intra_op_num_threads = --threads, ORT_ENABLE_ALL; intra-op
     threads spin between operators, ORT's default, unless --spinning off)
  -> YOLOv8 decode in numpy (transpose, best class, score >= --floor) + cv2.dnn.NMSBoxesBatched
  -> variance of the Laplacian (cv2.Laplacian(gray, CV_64F).var())
  -> a simple value (uncertain detections + blur) -> keep the top --keep frames (heapq)

The fps covers the whole loop, decode included. Writing the kept frames (cv2.imwrite)
happens after the loop and is timed separately, not counted in fps — framesift's fps
likewise stops at its last inference, before the keeper's final spool flush.

Prints one JSON line: {"fps": ..., "frames": ..., "seconds": ..., ...}.
"""

import argparse
import heapq
import json
import os
import sys
import time

import cv2
import numpy as np
import onnxruntime as ort


def letterbox(img, size, interp=cv2.INTER_LINEAR, fill=114):
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    top = (size - nh) // 2
    left = (size - nw) // 2
    img = cv2.copyMakeBorder(
        img, top, size - nh - top, left, size - nw - left,
        cv2.BORDER_CONSTANT, value=(fill, fill, fill),
    )
    return img, r, left, top


def to_tensor(img):
    # BGR HWC uint8 -> RGB NCHW float32 in 0..1
    x = img[:, :, ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)[None] / 255.0


def decode(out, r, pad_x, pad_y, w, h, floor, iou, max_det):
    """YOLOv8 [1, 4+nc, N] -> (boxes xyxy in frame pixels, scores, classes) after NMS."""
    preds = out[0].T  # (N, 4+nc)
    cls_scores = preds[:, 4:]
    cls = cls_scores.argmax(axis=1)
    conf = cls_scores[np.arange(len(cls)), cls]
    keep = conf >= floor
    if not keep.any():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    p, conf, cls = preds[keep], conf[keep], cls[keep]
    cx, cy, bw, bh = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    x1 = np.clip((cx - bw / 2 - pad_x) / r, 0, w)
    y1 = np.clip((cy - bh / 2 - pad_y) / r, 0, h)
    x2 = np.clip((cx + bw / 2 - pad_x) / r, 0, w)
    y2 = np.clip((cy + bh / 2 - pad_y) / r, 0, h)
    rects = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    # (OpenCV's top_k caps the boxes entering NMS, not those kept: cap afterwards.)
    idx = cv2.dnn.NMSBoxesBatched(rects.tolist(), conf.tolist(), cls.tolist(), floor, iou)
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    idx = idx[np.argsort(-conf[idx], kind="stable")][:max_det]
    boxes = np.stack([x1, y1, x2, y2], axis=1)[idx]
    return boxes, conf[idx], cls[idx]


def value(scores, blur, conf, band, blur_threshold):
    """Closest detection to the threshold (1 at the threshold, 0 at the band's edge),
    plus half a point for a blurred frame."""
    unc = 0.0
    if len(scores):
        d = np.abs(scores - conf)
        near = d[d <= band]
        if len(near):
            unc = float(1.0 - near.min() / band)
    blur_term = max(0.0, 1.0 - blur / blur_threshold)
    return unc + 0.5 * blur_term


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=0, help="0 = every file")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--floor", type=float, default=0.10,
                    help="decode down to this score (framesift keeps candidates down to "
                         "confidence - uncertainty_band = 0.10 for its uncertainty signal)")
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--max-det", type=int, default=100)
    ap.add_argument("--band", type=float, default=0.15)
    ap.add_argument("--blur-threshold", type=float, default=100.0,
                    help="on full-resolution grey, the usual cv2 rule of thumb")
    ap.add_argument("--interp", choices=["linear", "area"], default="linear",
                    help="cv2.resize interpolation: linear (Ultralytics' choice) or area "
                         "(what framesift's letterbox computes)")
    ap.add_argument("--spinning", choices=["default", "on", "off"], default="default",
                    help="session.intra_op.allow_spinning: ORT's default (on), or forced; "
                         "off matches framesift's default")
    ap.add_argument("--keep", type=int, default=16)
    ap.add_argument("--out-dir", default="", help="cv2.imwrite the kept frames here")
    args = ap.parse_args()

    cv2.setNumThreads(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.spinning != "default":
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if args.spinning == "on" else "0")
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    size = int(inp.shape[2])
    interp = cv2.INTER_AREA if args.interp == "area" else cv2.INTER_LINEAR

    files = sorted(
        os.path.join(args.frames_dir, f)
        for f in os.listdir(args.frames_dir)
        if f.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if args.frames:
        files = files[: args.frames]
    if not files:
        sys.exit(f"no frames in {args.frames_dir}")

    kept = []  # min-heap of (value, index, image)
    detections = 0
    run_seconds = 0.0  # inside session.run: the part no pipeline can speed up
    t0 = time.perf_counter()
    for i, path in enumerate(files):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        lb, r, px, py = letterbox(img, size, interp)
        tensor = to_tensor(lb)
        tr = time.perf_counter()
        out = sess.run([out_name], {inp.name: tensor})[0]
        run_seconds += time.perf_counter() - tr
        boxes, scores, classes = decode(out, r, px, py, w, h, args.floor, args.iou, args.max_det)
        detections += int((scores >= args.conf).sum())
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        blur = cv2.Laplacian(gray, cv2.CV_64F).var()
        v = value(scores, blur, args.conf, args.band, args.blur_threshold)
        item = (v, i, img)
        if len(kept) < args.keep:
            heapq.heappush(kept, item)
        elif v > kept[0][0]:
            heapq.heapreplace(kept, item)
    seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for v, i, img in sorted(kept, reverse=True):
            cv2.imwrite(os.path.join(args.out_dir, f"{i:06d}.jpg"), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
    write_seconds = time.perf_counter() - t1

    print(json.dumps({
        "fps": len(files) / seconds,
        "frames": len(files),
        "seconds": round(seconds, 3),
        "run_seconds": round(run_seconds, 3),
        "detections_per_frame": round(detections / len(files), 2),
        "kept": len(kept),
        "write_kept_seconds": round(write_seconds, 3),
        "threads": args.threads,
        "interp": args.interp,
        "spinning": args.spinning,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
