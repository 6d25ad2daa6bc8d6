#!/usr/bin/env python3
"""Evaluate an exported framesift detector (ONNX, YOLOv8 layout) with ONNX Runtime.

Reads a dataset written by `framesift synth` (images/, labels/, classes.txt and, for
store data, perturbations.csv) and reports mAP@0.5 (VOC-style, all-point interpolated
AP per class, averaged over the classes that have ground truth). Decoding follows the
runtime (`runtime/src/detector.rs`): per anchor the best class, confidence floor 0.001,
sort by score, class-aware greedy NMS at IoU 0.45, at most 100 detections; boxes are
mapped back to frame pixels through the letterbox.

    python3 models/detector/evaluate.py --model models/detector/model.onnx \
        --data target/detector-data/studio-val --data target/detector-data/store-eval

Needs only numpy, pillow and onnxruntime (no torch). `train.py` imports it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

INPUT = 320
FILL = 114
CONF = 0.001
IOU_NMS = 0.45
MAX_DET = 100
IOU_MATCH = 0.5
TAGS = ["lighting", "motion_blur", "hand_occlusion", "damaged_packaging",
        "unusual_angle", "unseen_product"]


# ---------------------------------------------------------------------------
# Preprocessing: exactly the runtime's letterbox (runtime/src/preprocess.rs).
# ---------------------------------------------------------------------------

def letterbox_geometry(w: int, h: int, size: int = INPUT):
    """scale, (new_w, new_h), (pad_x, pad_y) as `Letterbox::fit` computes them."""
    scale = min(np.float32(size) / np.float32(w), np.float32(size) / np.float32(h))
    new_w = min(max(int(round(float(np.float32(w) * scale))), 1), size)
    new_h = min(max(int(round(float(np.float32(h) * scale))), 1), size)
    return float(scale), (new_w, new_h), ((size - new_w) // 2, (size - new_h) // 2)


def letterbox_image(img: Image.Image, size: int = INPUT):
    """RGB PIL image -> (uint8 HWC canvas size x size, scale, pad_x, pad_y).

    Bilinear (convolution, antialiased when shrinking: the same filter as the runtime's
    fast_image_resize `Convolution(Bilinear)`), content centred, fill 114.
    """
    img = img.convert("RGB")
    w, h = img.size
    scale, (nw, nh), (px, py) = letterbox_geometry(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    canvas = np.full((size, size, 3), FILL, np.uint8)
    canvas[py:py + nh, px:px + nw] = np.asarray(img, np.uint8)
    return canvas, scale, px, py


def to_tensor(canvas: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 [1, 3, H, W] in 0..1 (normalization = "unit")."""
    return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


# ---------------------------------------------------------------------------
# Decoding: the runtime's YOLOv8 decoder + class-aware NMS.
# ---------------------------------------------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N,4] and b [M,4] (x1, y1, x2, y2) -> [N, M]."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def decode(output: np.ndarray, scale: float, pad_x: float, pad_y: float,
           frame_w: int, frame_h: int, conf: float = CONF, iou: float = IOU_NMS,
           max_det: int = MAX_DET):
    """output [1, 4+nc, N] -> (boxes [K,4] frame pixels, scores [K], classes [K])."""
    out = output[0]
    scores_all = out[4:]
    cls = scores_all.argmax(0)
    score = scores_all[cls, np.arange(out.shape[1])]
    keep = score >= conf
    cx, cy, w, h = out[0, keep], out[1, keep], out[2, keep], out[3, keep]
    score, cls = score[keep], cls[keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - pad_x) / scale, 0, frame_w)
    boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - pad_y) / scale, 0, frame_h)
    order = np.argsort(-score, kind="stable")
    boxes, score, cls = boxes[order], score[order], cls[order]
    kept: list[int] = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        b = boxes[idx]
        suppressed = np.zeros(len(idx), bool)
        n_kept = 0
        for i in range(len(idx)):
            if suppressed[i]:
                continue
            kept.append(idx[i])
            n_kept += 1
            if n_kept >= max_det:  # lower boxes of this class can't make the top max_det
                break
            suppressed |= box_iou(b[i:i + 1], b)[0] > iou
    kept_arr = np.array(sorted(kept, key=lambda k: (-score[k], k)), dtype=int)[:max_det]
    if len(kept_arr) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int)
    return boxes[kept_arr], score[kept_arr], cls[kept_arr]


# ---------------------------------------------------------------------------
# Dataset and metric.
# ---------------------------------------------------------------------------

def read_labels(path: Path, w: int, h: int):
    """YOLO label file -> (boxes [K,4] frame pixels, classes [K])."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                rows.append([float(p) for p in parts])
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, int)
    a = np.array(rows, np.float64)
    cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return boxes.astype(np.float32), a[:, 0].astype(int)


def read_tags(data: Path) -> dict[str, dict[str, int]]:
    path = data / "perturbations.csv"
    if not path.exists():
        return {}
    with path.open() as f:
        return {row["image"]: {t: int(row.get(t, 0) or 0) for t in TAGS}
                for row in csv.DictReader(f)}


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (VOC 2010+)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def mean_ap(frames: list[dict], nc: int, iou_thr: float = IOU_MATCH):
    """frames: dicts with gt_boxes, gt_cls, boxes, scores, cls. -> (mAP, per-class AP, n_gt)."""
    aps, n_gts = [], []
    for c in range(nc):
        n_gt = 0
        recs = []  # (score, tp)
        for fi, fr in enumerate(frames):
            g = fr["gt_boxes"][fr["gt_cls"] == c]
            n_gt += len(g)
            d_mask = fr["cls"] == c
            d, s = fr["boxes"][d_mask], fr["scores"][d_mask]
            matched = np.zeros(len(g), bool)
            ious = box_iou(d, g) if len(g) and len(d) else np.zeros((len(d), len(g)))
            for k in np.argsort(-s, kind="stable"):
                tp = 0
                if len(g):
                    j = int(np.argmax(ious[k]))
                    if ious[k, j] >= iou_thr and not matched[j]:
                        matched[j] = True
                        tp = 1
                recs.append((float(s[k]), tp, fi, k))
        n_gts.append(n_gt)
        if n_gt == 0:
            aps.append(float("nan"))
            continue
        recs.sort(key=lambda r: (-r[0], r[2], r[3]))
        tp = np.array([r[1] for r in recs], np.float64)
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / n_gt if len(tp) else np.zeros(0)
        precision = ctp / np.maximum(ctp + cfp, 1e-12) if len(tp) else np.zeros(0)
        aps.append(voc_ap(recall, precision))
    valid = [a for a in aps if not np.isnan(a)]
    return (float(np.mean(valid)) if valid else float("nan")), aps, n_gts


def load_session(model: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def predict_dataset(session, data: Path, limit: int | None = None) -> list[dict]:
    inp = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name
    images = sorted((data / "images").glob("*.jpg"))[:limit]
    frames = []
    for p in images:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        canvas, scale, px, py = letterbox_image(img)
        out = session.run([out_name], {inp: to_tensor(canvas)})[0]
        boxes, scores, cls = decode(out, scale, px, py, w, h)
        gt_boxes, gt_cls = read_labels(data / "labels" / (p.stem + ".txt"), w, h)
        frames.append(dict(image=p.name, boxes=boxes, scores=scores, cls=cls,
                           gt_boxes=gt_boxes, gt_cls=gt_cls))
    return frames


def evaluate_dataset(session, data: Path, names: list[str], limit: int | None = None) -> dict:
    """mAP@0.5 overall, per class, and per perturbation tag (frames carrying it)."""
    frames = predict_dataset(session, data, limit)
    nc = len(names)
    m, aps, n_gts = mean_ap(frames, nc)
    result = {
        "data": str(data),
        "frames": len(frames),
        "objects": int(sum(n_gts)),
        "map50": m,
        # COCO-style thresholds 0.50:0.05:0.95, same VOC AP: how tight the boxes are.
        "map50_95": float(np.mean([mean_ap(frames, nc, t)[0] for t in np.arange(0.5, 0.96, 0.05)])),
        "per_class": {names[c]: {"ap50": aps[c], "objects": n_gts[c]} for c in range(nc)},
    }
    tags = read_tags(data)
    if tags and any(any(v.values()) for v in tags.values()):
        per_tag = {}
        for t in TAGS + ["clean"]:
            if t == "clean":
                sub = [f for f in frames if not any(tags.get(f["image"], {}).values())]
            else:
                sub = [f for f in frames if tags.get(f["image"], {}).get(t, 0)]
            if not sub:
                continue
            tm, _, tn = mean_ap(sub, nc)
            per_tag[t] = {"frames": len(sub), "objects": int(sum(tn)), "map50": tm}
        result["per_tag"] = per_tag
    return result


def format_result(name: str, r: dict) -> str:
    lines = [f"{name}: mAP@0.5 = {r['map50']:.3f}, mAP@0.5:0.95 = {r['map50_95']:.3f} "
             f"({r['frames']} frames, {r['objects']} objects)"]
    lines.append("  per class: " + ", ".join(
        f"{k} {v['ap50']:.3f}" for k, v in r["per_class"].items()))
    for t, v in r.get("per_tag", {}).items():
        lines.append(f"  {t:<18} mAP@0.5 = {v['map50']:.3f} ({v['frames']} frames, {v['objects']} objects)")
    return "\n".join(lines)


def read_names(data: Path) -> list[str]:
    return [l.strip() for l in (data / "classes.txt").read_text().splitlines() if l.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path(__file__).with_name("model.onnx"))
    ap.add_argument("--data", type=Path, action="append", required=True,
                    help="a `framesift synth` output directory (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N frames only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    args = ap.parse_args(argv)
    session = load_session(args.model, args.threads)
    results = {}
    for d in args.data:
        r = evaluate_dataset(session, d, read_names(d), args.limit)
        results[d.name] = r
        print(format_result(d.name, r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
