#!/usr/bin/env python3
"""The capture flywheel, end to end on one machine: does what framesift keeps improve the
next model more than random frames would?

    python3 models/flywheel/flywheel.py            # the full run (models/FLYWHEEL.md)
    python3 models/flywheel/flywheel.py --smoke    # a few hundred frames, one seed (CI)

For each seed S:
  1. The store stream: `framesift synth --split store --seed S --frames N
     --frames-per-scene 8` (640x360) holds every frame of the stream with its ground truth.
  2. Arms. `framesift` and `uncertainty`: the real `framesift run` binary runs the
     current detector on a synthetic camera showing that same stream (seed S), with the
     default config (`framesift`) or with only the uncertainty signal (`uncertainty`),
     at `[keep] target_rate` = B. The frames it kept are the `seq`s in its spool's
     sidecars. `random`: as many frames as `framesift` kept, drawn uniformly from the
     stream with seed S. `uncertainty` keeps its most valuable frames when it kept more.
  3. Labels for the chosen frames come from the synthetic ground truth (standing in for
     human or VLM labelling).
  4. Fine-tuning, the same for every arm: start from the current detector's weights
     (read from its model.onnx), `--steps` steps of batch 16, half studio-train frames,
     half chosen frames, AdamW, warm-up then cosine, BatchNorm statistics frozen, torch
     seed S. Only the chosen frames differ between arms.
  5. Evaluation: mAP@0.5 and mAP@0.5:0.95 on a held-out store set (seed --eval-seed,
     one scene per frame) and on held-out studio frames, per class and per perturbation.
Round 2 (--round2): each arm's round-1 model gets a manifest (version 1.1.0, sha256) and
is deployed into the same loop on a fresh stream (seed S + 50); its chosen frames are
added to round 1's and the model is fine-tuned again from its round-1 weights.

Everything lands in --out (default target/flywheel): datasets, spools, models,
results.json and report.md (the tables FLYWHEEL.md quotes). A finished step is reused
when it runs again with the same inputs (`cached`). Same arguments, same machine, same threads: same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DETECTOR = REPO / "models" / "detector"
sys.path.insert(0, str(DETECTOR))

import evaluate as ev  # noqa: E402
import train as tr  # noqa: E402

ARMS = ("framesift", "random", "uncertainty")
WIDTH, HEIGHT, FRAMES_PER_SCENE = 640, 360, 8
ROUND2_OFFSET = 50  # round 2's stream seed is S + this


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cached(path: Path, key: dict, compute):
    """`compute()`, or what it returned before for the same `key` (stored in `path`): a
    re-run reuses a finished step only when its inputs are the same."""
    key = json.loads(json.dumps(key))  # as stored: tuples become lists
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return value


# ---------------------------------------------------------------------------
# Capture: the real binary on the synthetic store stream
# ---------------------------------------------------------------------------

# The framesift arm's signal weights by default: those chosen for the studio model the loop
# starts from, pinned so its results do not move with the runtime's defaults (which are
# tuned for the shipped model, the product of this loop). `--policy` names another file
# for another starting model.
STUDIO_POLICY = REPO / "models" / "detector" / "studio" / "policy.toml"


def policy_weights(path: Path) -> dict[str, float]:
    """The `[signals.<name>] weight`s of a framesift config file."""
    signals = tomllib.loads(path.read_text()).get("signals", {})
    weights = {name: table["weight"] for name, table in signals.items() if "weight" in table}
    if not weights:
        sys.exit(f"{path}: no [signals.<name>] weight to run the framesift arm with")
    return weights


def run_config(seed: int, budget: float, arm: str, policy: Path) -> str:
    """The `framesift run` config of a capture arm: one synthetic camera on the stream."""
    cfg = f"""# framesift run config written by models/flywheel/flywheel.py ({arm} arm)
[[camera]]
name = "cam0"
type = "synthetic"
width = {WIDTH}
height = {HEIGHT}
seed = {seed}
split = "store"
frames_per_scene = {FRAMES_PER_SCENE}

[keep]
target_rate = {budget}
control_seed = 1

[spool]
max_bytes = 1099511627776
min_free_bytes = 0
device_id = "flywheel"
"""
    weights = policy_weights(policy)
    if arm == "uncertainty":
        # Only the uncertainty signal decides; no random control slice.
        cfg = cfg.replace("[spool]", "control_share = 0.0\n\n[spool]")
        for sig in weights:
            if sig != "uncertainty":
                cfg += f"\n[signals.{sig}]\nweight = 0.0\n"
    else:
        shown = policy.relative_to(REPO) if policy.is_relative_to(REPO) else policy
        cfg += f"\n# The signal weights of {shown}.\n"
        for sig, weight in weights.items():
            cfg += f"\n[signals.{sig}]\nweight = {weight}\n"
    return cfg


def capture(binary: Path, model: Path, seed: int, frames: int, budget: float, arm: str,
            policy: Path, out: Path) -> list[dict]:
    """Run `framesift run` over `frames` frames of stream `seed`; -> the kept frames'
    sidecars (seq, value, control, truth), in seq order."""
    config = run_config(seed, budget, arm, policy)
    key = {"config": config, "model": sha256(model), "frames": frames}
    return cached(out.with_name(out.name + ".json"), key,
                  lambda: run_capture(binary, model, config, seed, frames, arm, out))


def run_capture(binary: Path, model: Path, config: str, seed: int, frames: int, arm: str,
                out: Path) -> list[dict]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = out / "run.toml"
    cfg.write_text(config)
    cmd = [str(binary), "run", "--config", str(cfg), "--model", str(model),
           "--spool-dir", str(out / "spool"), "--max-frames", str(frames), "--quiet"]
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (out / "run.log").write_text(r.stdout)
    if r.returncode != 0:
        sys.exit(f"framesift run failed ({r.returncode}); see {out / 'run.log'}:\n{r.stdout[-2000:]}")
    dropped = [ln.split()[1] for ln in r.stdout.splitlines() if ln.strip().startswith("dropped")]
    if dropped != ["0"]:
        # A frame dropped for want of time (a busy keeper, a full queue) makes the
        # selection depend on the machine's load, not only on the seed.
        log(f"capture: {arm} seed {seed}: the run dropped frames ({dropped}); see {out / 'run.log'}")
    kept = []
    for p in sorted((out / "spool").glob("*.json")):
        d = json.loads(p.read_text())
        if "seq" not in d or "truth" not in d:
            continue
        kept.append({"seq": d["seq"], "value": d["value"], "control": d["control"],
                     "boxes": len(d["truth"]["boxes"]), "perturbations": d["truth"]["perturbations"]})
    kept.sort(key=lambda k: k["seq"])
    log(f"capture: {arm} seed {seed}: kept {len(kept)} of {frames} frames in {time.time() - t0:.0f} s")
    return kept


def check_stream(stream: Path, kept: list[dict]) -> None:
    """The labels come from the synth export of the stream: its objects must be the ones
    the camera's sidecars recorded, frame by frame."""
    counts: dict[int, int] = {}
    for ln in (stream / "objects.csv").read_text().splitlines()[1:]:
        i = int(ln.split(".", 1)[0])
        counts[i] = counts.get(i, 0) + 1
    for k in kept:
        if counts.get(k["seq"], 0) != k["boxes"]:
            sys.exit(f"{stream}: frame {k['seq']} has {counts.get(k['seq'], 0)} objects, the spool's "
                     f"sidecar {k['boxes']}: the synth export and the camera show different frames")


def choose(arm: str, kept: dict[str, list[dict]], frames: int, seed: int) -> list[int]:
    """The frames an arm labels: framesift's kept frames, as many drawn at random, or
    uncertainty's (its most valuable, when it kept more)."""
    k = len(kept["framesift"])
    if arm == "framesift":
        return [f["seq"] for f in kept["framesift"]]
    if arm == "random":
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(frames, size=min(k, frames), replace=False))
    ranked = sorted(kept["uncertainty"], key=lambda f: (-f["value"], f["seq"]))[:k]
    return sorted(f["seq"] for f in ranked)


# ---------------------------------------------------------------------------
# Fine-tuning and evaluation (one job per arm, seed and round; run in worker processes)
# ---------------------------------------------------------------------------

def finetune_job(job: dict) -> dict:
    out = Path(job["out"])
    return cached(out / "result.json", {**job, "init": sha256(job["init"])}, lambda: finetune(job, out))


def finetune(job: dict, out: Path) -> dict:
    import torch
    from net import Detector, export_onnx, freeze_batchnorm, load_onnx

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(job["threads"])
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(job["seed"])
    rng = np.random.default_rng(job["seed"])

    # One index space: the studio frames, then the chosen ones.
    frames = tr.TrainSet(Path(job["studio"]))
    n_studio = len(frames)
    for d, seqs in job["chosen"]:
        frames.add(Path(d), [f"{i:06d}" for i in seqs])
    n_chosen = len(frames) - n_studio
    model = Detector(nc=len(tr.NAMES))
    load_onnx(model, job["init"])
    model = model.to(memory_format=torch.channels_last)
    opt = tr.make_optimizer(model, job["lr"], 5e-4)
    steps, half = job["steps"], job["batch"] // 2
    warmup = max(1, steps // 10)
    t0 = time.time()
    s_order, c_order = rng.permutation(n_studio), rng.permutation(n_chosen)
    si = ci = 0
    model.train()
    freeze_batchnorm(model)
    for step in range(steps):
        lr = job["lr"] * ((step + 1) / warmup if step < warmup else
                          0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        idx_s, idx_c = [], []
        for _ in range(half):
            if si == len(s_order):
                s_order, si = rng.permutation(n_studio), 0
            if ci == len(c_order):
                c_order, ci = rng.permutation(n_chosen), 0
            idx_s.append(s_order[si])
            idx_c.append(c_order[ci])
            si, ci = si + 1, ci + 1
        tr.train_step(model, opt, frames, idx_s + [n_studio + i for i in idx_c], rng)
    train_s = time.time() - t0
    model.eval()
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path, tr.SIZE, tr.metadata(job["version"], job["description"]))
    sha = sha256(onnx_path)
    tr.write_manifest(out / "model.toml", sha, job["version"], "models/flywheel/flywheel.py")
    diff = tr.check_ort(model, onnx_path, Path(job["studio_val"]), n=4)
    if diff > 1e-3:
        raise RuntimeError(f"{onnx_path}: onnxruntime differs from PyTorch by {diff}")
    return {"arm": job["arm"], "seed": job["seed"], "round": job["round"], "frames": n_chosen,
            "train_s": round(train_s, 1), "sha256": sha, "version": job["version"],
            "model": str(onnx_path), **evaluate_model(onnx_path, job)}


def evaluate_model(onnx_path: Path, job: dict) -> dict:
    sess = ev.load_session(onnx_path, threads=job["threads"])
    out = {}
    for name in ("store", "studio"):
        r = ev.evaluate_dataset(sess, Path(job["store_eval" if name == "store" else "studio_val"]), tr.NAMES)
        out[name] = {k: v for k, v in r.items() if k != "data"}
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def stats(xs: list[float]) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f} ({min(xs):.3f}–{max(xs):.3f})"


def report(base: dict, results: list[dict], args, wall_s: float) -> str:
    by = lambda arm, rnd: [r for r in results if r["arm"] == arm and r["round"] == rnd]  # noqa: E731
    seeds = sorted({r["seed"] for r in results})
    lines = [f"Stream: {args.frames} store frames per seed ({WIDTH}x{HEIGHT}, {FRAMES_PER_SCENE} frames "
             f"a scene), label budget {args.budget * 100:g} %, seeds {', '.join(map(str, seeds))}; held-out "
             f"store set seed {args.eval_seed}, {args.eval_frames} frames; fine-tuning {args.steps} steps "
             f"of batch {args.batch}. Mean ± sample standard deviation (min–max) over seeds.", "",
             "| model | labelled frames | store mAP@0.5 | store mAP@0.5:0.95 | studio mAP@0.5 | "
             "store mAP@0.5 gain |", "|---|---|---|---|---|---|",
             f"| starting model ({args.model.parent.name}/{args.model.name}) | 0 | "
             f"{base['store']['map50']:.3f} | {base['store']['map50_95']:.3f} | {base['studio']['map50']:.3f} | — |"]
    gains = {}
    for rnd in (1, 2):
        for arm in ARMS:
            rs = by(arm, rnd)
            if not rs:
                continue
            g = [r["store"]["map50"] - base["store"]["map50"] for r in rs]
            gains[(arm, rnd)] = g
            n = sorted({r["frames"] for r in rs})
            lines.append(f"| round {rnd}: {arm} | {n[0] if len(n) == 1 else f'{n[0]}–{n[-1]}'} | "
                         f"{stats([r['store']['map50'] for r in rs])} | "
                         f"{stats([r['store']['map50_95'] for r in rs])} | "
                         f"{stats([r['studio']['map50'] for r in rs])} | {stats(g)} |")
    lines.append("")
    if ("framesift", 1) in gains and ("random", 1) in gains:
        f, r = np.mean(gains[("framesift", 1)]), np.mean(gains[("random", 1)])
        lines.append(f"Round 1: framesift's mean store mAP@0.5 gain {f:+.3f}, random's {r:+.3f}: "
                     f"ratio {f / r:.2f}" if r > 0 else f"Round 1: framesift {f:+.3f}, random {r:+.3f}")
        lines.append("")
    # Per perturbation and per class, round 1, means over seeds.
    cols = [a for a in ARMS if by(a, 1)]
    tags = list(base["store"].get("per_tag", {}))
    lines += ["Store mAP@0.5 by perturbation (frames carrying it), round 1, mean over seeds:", "",
              "| perturbation | frames | before | " + " | ".join(cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for t in tags:
        row = [f"{np.mean([r['store']['per_tag'][t]['map50'] for r in by(a, 1)]):.3f}" for a in cols]
        lines.append(f"| {t} | {base['store']['per_tag'][t]['frames']} | "
                     f"{base['store']['per_tag'][t]['map50']:.3f} | " + " | ".join(row) + " |")
    lines += ["", "Store AP@0.5 by class, round 1, mean over seeds:", "",
              "| class | objects | before | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for c in tr.NAMES:
        row = [f"{np.mean([r['store']['per_class'][c]['ap50'] for r in by(a, 1)]):.3f}" for a in cols]
        lines.append(f"| {c} | {base['store']['per_class'][c]['objects']} | "
                     f"{base['store']['per_class'][c]['ap50']:.3f} | " + " | ".join(row) + " |")
    lines += ["", f"Wall time: {wall_s / 60:.1f} min ({os.cpu_count()} cores, --jobs {args.jobs})."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The capture flywheel: framesift's selection vs random "
                                             "vs uncertainty-only, by the next model's store mAP.")
    ap.add_argument("--frames", type=int, default=10000, help="store frames per stream")
    ap.add_argument("--budget", type=float, default=0.02, help="label budget ([keep] target_rate)")
    ap.add_argument("--seeds", default="31,32,33", help="stream seeds, one per run of every arm")
    ap.add_argument("--eval-seed", type=int, default=1000, help="seed of the held-out store set")
    ap.add_argument("--eval-frames", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=400, help="fine-tuning steps, every arm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--round2", action="store_true", help="deploy the round-1 models on fresh streams")
    ap.add_argument("--jobs", type=int, default=2, help="fine-tuning jobs at once (each one thread)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI: 300 frames, 20 steps, one seed, 60 evaluation frames, round 2")
    ap.add_argument("--framesift", default=None, help="framesift binary (default target/release)")
    ap.add_argument("--model", type=Path, default=DETECTOR / "studio" / "model.onnx",
                    help="the starting detector (default: the studio-trained model)")
    ap.add_argument("--policy", type=Path, default=STUDIO_POLICY,
                    help="a framesift config whose [signals.*] weights the framesift arm runs with "
                         "(default: those chosen for the studio model)")
    ap.add_argument("--out", type=Path, default=REPO / "target" / "flywheel")
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.steps, args.seeds, args.eval_frames, args.round2 = 300, 20, "1", 60, True
        args.out = args.out.with_name(args.out.name + "-smoke")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.eval_seed in seeds or args.eval_seed in (s + ROUND2_OFFSET for s in seeds):
        sys.exit("--eval-seed must differ from every stream seed")
    t_start = time.time()
    binary = Path(args.framesift) if args.framesift else REPO / "target" / "release" / "framesift"
    if not binary.exists():
        log("building the framesift binary (cargo build --release --bin framesift)")
        subprocess.run(["cargo", "build", "--release", "--bin", "framesift"], cwd=REPO, check=True)
    data = REPO / "target" / "detector-data"
    tr.synth(binary, data / "studio-train", "studio", 1, 3000)
    tr.synth(binary, data / "studio-val", "studio", 2, 300)
    args.out.mkdir(parents=True, exist_ok=True)
    store_eval = args.out / f"store-eval-{args.eval_seed}"
    synth_stream(binary, store_eval, args.eval_seed, args.eval_frames, 1)
    common = {"studio": str(data / "studio-train"), "studio_val": str(data / "studio-val"),
              "store_eval": str(store_eval),
              "steps": args.steps, "batch": args.batch, "lr": args.lr, "threads": 1}

    base = cached(args.out / "base.json", {**common, "model": sha256(args.model)},
                  lambda: evaluate_model(args.model, common))
    log(f"starting model: store mAP@0.5 {base['store']['map50']:.3f}, studio {base['studio']['map50']:.3f}")

    def round_jobs(rnd: int, inits: dict, prior: dict) -> tuple[list[dict], dict]:
        jobs, chosen_by = [], {}
        for s in seeds:
            stream_seed = s if rnd == 1 else s + ROUND2_OFFSET
            stream = args.out / f"stream-{stream_seed}"
            synth_stream(binary, stream, stream_seed, args.frames, FRAMES_PER_SCENE)
            kept = {}
            for arm in ("framesift", "uncertainty"):
                kept[arm] = capture(binary, inits.get((arm, s), args.model), stream_seed, args.frames,
                                    args.budget, arm, args.policy,
                                    args.out / f"round{rnd}" / f"seed{s}" / f"capture-{arm}")
            for arm_kept in kept.values():
                check_stream(stream, arm_kept)
            for arm in ARMS:
                seqs = choose(arm, kept, args.frames, stream_seed)
                chosen = prior.get((arm, s), []) + [(str(stream), seqs)]
                chosen_by[(arm, s)] = chosen
                jobs.append({**common, "arm": arm, "seed": s, "round": rnd, "chosen": chosen,
                             "init": str(inits.get((arm, s), args.model)),
                             "version": f"1.{rnd}.0",
                             "description": f"framesift product detector, flywheel round {rnd} "
                                            f"({arm} selection, stream seed {stream_seed})",
                             "out": str(args.out / f"round{rnd}" / f"seed{s}" / arm)})
        return jobs, chosen_by

    results = []
    jobs, chosen1 = round_jobs(1, {}, {})
    results += run_jobs(jobs, args.jobs)
    if args.round2:
        inits = {(r["arm"], r["seed"]): r["model"] for r in results}
        jobs, _ = round_jobs(2, inits, chosen1)
        results += run_jobs(jobs, args.jobs)
    wall = time.time() - t_start
    (args.out / "results.json").write_text(json.dumps({"base": base, "results": results,
                                                       "args": {k: str(v) for k, v in vars(args).items()}},
                                                      indent=1) + "\n")
    text = report(base, results, args, wall)
    (args.out / "report.md").write_text(text)
    print(text)
    log(f"done in {wall / 60:.1f} min; {args.out / 'report.md'}")
    return 0


def synth_stream(binary: Path, out: Path, seed: int, frames: int, per_scene: int) -> None:
    stamp = out / ".synth-args"
    key = f"store {seed} {frames} {WIDTH}x{HEIGHT} {per_scene}"
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    if out.exists():
        shutil.rmtree(out)
    log(f"data: store stream seed {seed}, {frames} frames -> {out}")
    r = subprocess.run([str(binary), "synth", "--out", str(out), "--frames", str(frames), "--split", "store",
                        "--seed", str(seed), "--width", str(WIDTH), "--height", str(HEIGHT),
                        "--frames-per-scene", str(per_scene)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"framesift synth failed ({r.returncode}):\n{r.stderr[-2000:]}")
    stamp.write_text(key + "\n")


def run_jobs(jobs: list[dict], n: int) -> list[dict]:
    log(f"fine-tuning {len(jobs)} models, {n} at a time")
    t0 = time.time()
    results = []
    with ProcessPoolExecutor(max_workers=n) as pool:
        for r in pool.map(finetune_job, jobs):
            log(f"  round {r['round']} {r['arm']} seed {r['seed']}: {r['frames']} frames, store mAP@0.5 "
                f"{r['store']['map50']:.3f} (0.5:0.95 {r['store']['map50_95']:.3f}), studio "
                f"{r['studio']['map50']:.3f}, {r['train_s']:.0f} s training; {time.time() - t0:.0f} s")
            results.append(r)
    return results


if __name__ == "__main__":
    sys.exit(main())
