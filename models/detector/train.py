#!/usr/bin/env python3
"""Train, export and evaluate the framesift product detector, in one command.

    python3 models/detector/train.py --out models/detector/studio

1. Synthesises the datasets with the framesift binary (unless --train/--val/--store
   point at existing `framesift synth` directories):
     studio-train  framesift synth --split studio --seed 1 --frames 3000
     studio-val    framesift synth --split studio --seed 2 --frames 300
     store-eval    framesift synth --split store  --seed 3 --frames 300
   into --data-dir (default target/detector-data, which git ignores).
2. Trains the network in net.py on STUDIO frames only, on the CPU, with a fixed number
   of steps (light augmentation: scale/translate jitter and horizontal flip; nothing
   store-like).
3. Writes OUT/model.onnx (opset 17, YOLOv8 layout, Ultralytics-style metadata) and
   OUT/model.toml (the runtime's manifest, with the model's sha256), checks ONNX Runtime
   against PyTorch, evaluates mAP@0.5 on studio-val and store-eval with evaluate.py and
   writes OUT/metrics.json.

Everything is seeded; with the same thread count (default 1) a re-run on the same
machine reproduces model.onnx byte for byte (see MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import evaluate as ev  # noqa: E402

NAMES = ["cereal_box", "soda_can", "milk_carton", "water_bottle", "apple", "chip_bag"]
MODEL_ID = "framesift-products"
VERSION = "1.0.0"
SIZE = 320
# Training crop: rows CROP_Y0 .. CROP_Y0 + CROP_H of the 320x320 letterboxed canvas. The
# 640x360 frames letterbox to rows 70..250; the crop keeps that band plus the grey fill
# around it (and the scale/translate jitter) and saves 30 % of the compute. The network is
# fully convolutional, so it runs on the full 320x320 input after training.
CROP_Y0, CROP_H = 48, 224

DATASETS = {  # name: (split, seed, default frames)
    "studio-train": ("studio", 1, 3000),
    "studio-val": ("studio", 2, 300),
    "store-eval": ("store", 3, 300),
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def synth(binary: Path, out: Path, split: str, seed: int, frames: int) -> None:
    """Run `framesift synth` into `out`, unless `out` already holds that dataset."""
    stamp = out / ".synth-args"
    args = [str(binary), "synth", "--out", str(out), "--frames", str(frames), "--split", split,
            "--seed", str(seed), "--width", "640", "--height", "360", "--frames-per-scene", "1"]
    key = " ".join(["synth", "--frames", str(frames), "--split", split, "--seed", str(seed),
                    "--width", "640", "--height", "360", "--frames-per-scene", "1"])
    if stamp.exists() and stamp.read_text().strip() == key:
        log(f"data: {out} present ({key})")
        return
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"data: framesift {key} --out {out}")
    r = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"framesift synth failed ({r.returncode}):\n{r.stderr[-2000:]}")
    stamp.write_text(key + "\n")


def find_binary(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for cand in (REPO / "target" / "release" / "framesift", REPO / "target" / "debug" / "framesift"):
        # A stale build may predate the `synth` subcommand: use one that has it.
        if cand.exists() and subprocess.run([str(cand), "synth", "--help"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL).returncode == 0:
            return cand
    log("building the framesift binary (cargo build --bin framesift)")
    subprocess.run(["cargo", "build", "--bin", "framesift"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "framesift"


class TrainSet:
    """Studio frames, letterboxed once at the runtime's scale (content only, uint8)."""

    def __init__(self, data: Path, stems: list[str] | None = None):
        """All of `data`'s frames, or those named by `stems` (file names without .jpg)."""
        self.images, self.boxes, self.cls = [], [], []
        self.add(data, stems)

    def add(self, data: Path, stems: list[str] | None = None) -> None:
        paths = sorted((data / "images").glob("*.jpg")) if stems is None else \
            [data / "images" / f"{s}.jpg" for s in stems]
        for p in paths:
            img = Image.open(p).convert("RGB")
            w, h = img.size
            scale, (nw, nh), _ = ev.letterbox_geometry(w, h)
            content = np.asarray(img.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else img,
                                 np.uint8)
            boxes, cls = ev.read_labels(data / "labels" / (p.stem + ".txt"), w, h)
            self.images.append(content)
            self.boxes.append((boxes * scale).astype(np.float32))  # content pixels
            self.cls.append(cls)

    def __len__(self):
        return len(self.images)

    def sample(self, i: int, rng: np.random.Generator, augment: bool):
        """-> canvas crop uint8 [CROP_H, SIZE, 3], boxes [K,4] crop pixels, classes [K]."""
        img, boxes, cls = self.images[i], self.boxes[i].copy(), self.cls[i]
        h, w = img.shape[:2]
        s, dx, dy, flip = 1.0, 0, 0, False
        if augment:
            if rng.random() < 0.5:
                s = float(rng.uniform(0.8, 1.25))
            if rng.random() < 0.5:
                dx, dy = (int(v) for v in rng.integers(-24, 25, size=2))
            flip = bool(rng.random() < 0.5)
        if s != 1.0:
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
            w, h = nw, nh
        if flip:
            img = img[:, ::-1]
            boxes = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + \
                np.array([w, 0, w, 0], np.float32)
        # Place centred (as the letterbox does) plus the jitter, then take the crop band.
        ox, oy = (SIZE - w) // 2 + dx, (SIZE - h) // 2 + dy - CROP_Y0
        canvas = np.full((CROP_H, SIZE, 3), ev.FILL, np.uint8)
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + w, SIZE), min(oy + h, CROP_H)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = img[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        boxes = boxes + np.array([ox, oy, ox, oy], np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        clipped = boxes.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(x0, x1)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(y0, y1)
        cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (cw > 2) & (ch > 2) & (cw * ch > 0.4 * np.maximum(area, 1e-6))
        return canvas, clipped[keep], cls[keep]


def make_batch(ds: TrainSet, idx, rng, augment: bool):
    import torch
    imgs, bxs, cls = [], [], []
    for i in idx:
        im, b, c = ds.sample(int(i), rng, augment)
        imgs.append(im)
        bxs.append(b)
        cls.append(c)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
    m = max(1, max(len(b) for b in bxs))
    gb = torch.zeros(len(idx), m, 4)
    gc = torch.zeros(len(idx), m, dtype=torch.long)
    gm = torch.zeros(len(idx), m, dtype=torch.bool)
    for k, (b, c) in enumerate(zip(bxs, cls)):
        gb[k, :len(b)] = torch.from_numpy(b)
        gc[k, :len(c)] = torch.from_numpy(c.astype(np.int64))
        gm[k, :len(b)] = True
    return x.contiguous(), gb, gc, gm


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

class EMA:
    """Exponential moving average of the weights (and BN buffers), Ultralytics-style ramp."""

    def __init__(self, model, decay: float = 0.9995, tau: float = 500.0):
        import copy
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def update(self, model):
        import torch
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        with torch.no_grad():
            msd = model.state_dict()
            for k, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
                else:
                    v.copy_(msd[k])


def make_optimizer(model, lr: float, weight_decay: float):
    """AdamW with weight decay on the convolution weights only."""
    import torch
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.ndim == 4 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999))


def train_step(model, opt, ds, idx, rng) -> tuple[float, float]:
    """One optimisation step on frames `idx` of `ds` (augmented) -> (box loss, class loss)."""
    import torch
    from net import detection_loss
    x, gb, gc, gm = make_batch(ds, idx, rng, True)
    x = x.contiguous(memory_format=torch.channels_last)
    loss, lbox, lcls = detection_loss(model(x), gb, gc, gm)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    return float(lbox), float(lcls)


def train(ds: TrainSet, args) -> "object":
    import torch
    from net import Detector

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Detector(nc=len(NAMES)).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, args.lr, args.weight_decay)
    ema = EMA(model)
    steps_per_epoch = len(ds) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = min(300, total // 10)
    log(f"train: {len(ds)} studio frames, {n_params} parameters, batch {args.batch}, "
        f"{args.epochs} epochs = {total} steps, {torch.get_num_threads()} threads")
    step, t0 = 0, time.time()
    run_box = run_cls = 0.0
    model.train()
    for epoch in range(args.epochs):
        order = rng.permutation(len(ds))
        for b in range(steps_per_epoch):
            lr = args.lr * (step + 1) / warmup if step < warmup else \
                args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
            for g in opt.param_groups:
                g["lr"] = lr
            lbox, lcls = train_step(model, opt, ds, order[b * args.batch:(b + 1) * args.batch], rng)
            ema.update(model)
            step += 1
            run_box = 0.98 * run_box + 0.02 * float(lbox) if step > 1 else float(lbox)
            run_cls = 0.98 * run_cls + 0.02 * float(lcls) if step > 1 else float(lcls)
            if step % 100 == 0 or step == total:
                el = time.time() - t0
                log(f"  step {step}/{total} epoch {epoch + 1} lr {lr:.5f} box {run_box:.4f} "
                    f"cls {run_cls:.4f}  {el / 60:.1f} min elapsed, ~{el / step * (total - step) / 60:.1f} min left")
    return ema.ema, n_params, time.time() - t0


# ---------------------------------------------------------------------------
# Export and checks
# ---------------------------------------------------------------------------

def metadata(version: str = VERSION, description: str =
             "framesift product detector (YOLOv8-style, trained on synthetic studio frames)") -> dict[str, str]:
    return {
        "description": description,
        "author": "framesift",
        "version": version,
        "task": "detect",
        "stride": "32",
        "batch": "1",
        "imgsz": f"[{SIZE}, {SIZE}]",
        "names": "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(NAMES)) + "}",
        "head": "Detect",
        "channels": "3",
        "end2end": "False",
    }


def write_manifest(path: Path, sha: str, version: str = VERSION,
                   written_by: str = "models/detector/train.py") -> None:
    names = ", ".join(f'"{n}"' for n in NAMES)
    path.write_text(f"""# Manifest for the framesift product detector (written by {written_by}).
id = "{MODEL_ID}"
version = "{version}"
sha256 = "{sha}"
layout = "yolov8"           # output [1, 4+nc, N]
input_width = {SIZE}
input_height = {SIZE}
input_name = "images"
output_name = "output0"
features_output = "features"  # [1, 160] pooled neck features
normalization = "unit"      # pixels / 255, RGB, NCHW
letterbox_fill = {ev.FILL}
names = [{names}]
""")


def check_ort(model, onnx_path: Path, data: Path, n: int = 8) -> float:
    """Max |ORT - PyTorch| over the full output on n letterboxed frames."""
    import torch
    sess = ev.load_session(onnx_path)
    worst = 0.0
    for p in sorted((data / "images").glob("*.jpg"))[:n]:
        canvas, *_ = ev.letterbox_image(Image.open(p))
        x = ev.to_tensor(canvas)
        with torch.no_grad():
            ref = model.predict(torch.from_numpy(x)).numpy()
        out = sess.run(["output0"], {"images": x})[0]
        assert out.shape == (1, 4 + len(NAMES), 2100), out.shape
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train, export and evaluate the framesift detector.")
    ap.add_argument("--out", type=Path, default=HERE / "studio",
                    help="where model.onnx, model.toml, metrics.json go (default: the studio model's folder)")
    ap.add_argument("--data-dir", type=Path, default=REPO / "target" / "detector-data")
    ap.add_argument("--framesift", default=None, help="framesift binary (default target/{release,debug})")
    ap.add_argument("--train", type=Path, default=None, help="existing studio synth dir to train on")
    ap.add_argument("--val", type=Path, default=None, help="existing held-out studio synth dir")
    ap.add_argument("--store", type=Path, default=None, help="existing store synth dir")
    ap.add_argument("--train-frames", type=int, default=DATASETS["studio-train"][2])
    ap.add_argument("--eval-frames", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=13)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine one thread trains "
                         "faster than two; the trained bytes may depend on it)")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)

    t_start = time.time()
    dirs = {"studio-train": args.train, "studio-val": args.val, "store-eval": args.store}
    counts = {"studio-train": args.train_frames, "studio-val": args.eval_frames, "store-eval": args.eval_frames}
    binary = None
    for name, (split, seed, _) in DATASETS.items():
        if dirs[name] is None:
            binary = binary or find_binary(args.framesift)
            dirs[name] = args.data_dir / name
            synth(binary, dirs[name], split, seed, counts[name])
    for name in ("studio-train", "studio-val"):
        tags = ev.read_tags(dirs[name])
        if any(any(v.values()) for v in tags.values()):
            sys.exit(f"{dirs[name]} has perturbed frames: train and validate on studio data only")

    t0 = time.time()
    ds = TrainSet(dirs["studio-train"])
    log(f"data: loaded {len(ds)} training frames in {time.time() - t0:.0f} s")
    model, n_params, train_s = train(ds, args)
    log(f"train: done in {train_s / 60:.1f} min")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    from net import export_onnx
    export_onnx(model, onnx_path, SIZE, metadata())
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    write_manifest(args.out / "model.toml", sha)
    size = onnx_path.stat().st_size
    log(f"export: {onnx_path} {size} bytes sha256 {sha}")
    diff = check_ort(model, onnx_path, dirs["studio-val"])
    log(f"check: max |onnxruntime - pytorch| = {diff:.3g}")
    if diff > 1e-3:
        sys.exit("onnxruntime output differs from PyTorch")

    sess = ev.load_session(onnx_path)
    results = {}
    for name in ("studio-val", "store-eval"):
        r = ev.evaluate_dataset(sess, dirs[name], NAMES)
        results[name] = r
        log(ev.format_result(name, r))
    import onnxruntime
    metrics = {
        "model": {"id": MODEL_ID, "version": VERSION, "sha256": sha, "bytes": size,
                  "parameters": n_params},
        "training": {"frames": len(ds), "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
                     "seed": args.seed, "threads": args.threads,
                     "minutes": round(train_s / 60, 1),
                     "total_minutes": round((time.time() - t_start) / 60, 1),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                     "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "datasets": {k: (open(dirs[k] / ".synth-args").read().strip()
                         if (dirs[k] / ".synth-args").exists() else str(dirs[k])) for k in dirs},
        "ort_vs_torch_max_abs_diff": diff,
        "eval": {k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in results.items()},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"done in {(time.time() - t_start) / 60:.1f} min; metrics in {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
