#!/usr/bin/env python3
"""Build the framesift stand-in detector (models/standin/model.onnx).

A tiny, hand-built, untrained convolutional detector with the output contract of an
Ultralytics YOLOv8 export, so the runtime, its tests and its benchmarks have a real ONNX
model to run until the trained detector lands. Built with the `onnx` helper API only (no
PyTorch). Deterministic: every weight is either set by hand or drawn from numpy with a
fixed seed, and nothing time- or host-dependent goes into the file, so two runs produce
a byte-identical model.onnx.

Contract
  input   images   float32 [1, 3, 320, 320]  RGB, 0..1, NCHW
  output  output0  float32 [1, 4 + 6, 2100]  rows 0..3 cx, cy, w, h in input pixels,
                                             rows 4..9 class scores after sigmoid
  anchors 40*40 (stride 8), 20*20 (stride 16), 10*10 (stride 32), each grid row-major

Network (all weights below are hand-set unless marked "seeded")
  stem      Pad(edge) + Conv 3x3 s2 + Relu: 10 colour channels (hue differences, luma,
            bright, very bright, dark) and 6 texture channels (seeded zero-mean luma
            filters as +/- pairs = rectified edge energy), at stride 2.
            Conv 1x1 + Relu: colour-prototype units (min(), neutral-bright, silver ...).
            Conv 1x1 + Clip(0, 1): per-pixel membership of the 6 classes, plus luma,
            bright, dark, chroma and the texture channels: 16 channels.
  backbone  four Pad(edge) + Conv 3x3 s2 + Relu stages (strides 4, 8, 16, 32) that blur
            the membership/colour channels and mix the texture channels (seeded).
  heads     P3/P4/P5: a 5x5 surround average (depthwise Conv); class logits
            = GAIN * (membership(cell) - BETA * membership(surround)) + level bias, a
            centre-surround blob detector tuned to each level's scale; a 3x3 MaxPool
            peak test that lowers non-peak logits by PEAK_PENALTY (CenterNet-style, with
            a seeded sub-1e-3 jitter to break ties on flat regions); Sigmoid.
            Boxes: 1x1 Conv -> t (seeded weights on the cell, hand-set on the surround so
            the box grows with the surround's class membership), decoded in-graph like
            YOLOv8 (DFL left out):
            cx = (grid_x + 0.5 + 0.5*tanh(t0)) * stride, w = stride * BOX_SCALE * exp(clip(t2, -1, 1)).
  output    per level Concat(xy, wh, scores) -> Reshape [1, 10, n*n]; Concat over levels.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240607
IMGSZ = 320
STRIDES = (8, 16, 32)
NAMES = ["cereal_box", "soda_can", "milk_carton", "water_bottle", "apple", "chip_bag"]
NC = len(NAMES)
OPSET = 17
IR_VERSION = 8
VERSION = "0.1.0"
DESCRIPTION = "framesift stand-in detector (untrained, hand-built)"

# ---- tunables (set with check_standin.py; see README.md) -------------------------------
GAIN = 8.0  # logit units per unit of class membership
BETA = 0.9  # weight of the surround membership subtracted from the cell membership
LEVEL_BIAS = {8: -5.6, 16: -5.2, 32: -4.7}  # logit bias per stride
PEAK_PENALTY = 1.5  # logit subtracted where a cell is not the 3x3 maximum of its class
BOX_WEIGHT_STD = 0.2  # std of the seeded random box-regression weights
BOX_SCALE = 3.0  # box side = stride * BOX_SCALE * exp(clip(t, -1, 1))
BOX_SURROUND_GAIN = 2.0  # t_wh += gain * summed surround membership
BOX_BIAS = -0.5  # t_wh bias

# ---- stem colour channels: relu(a_r*r + a_g*g + a_b*b + bias) on a 3x3 [1,2,1]^2 blur ----
LUMA = (0.299, 0.587, 0.114)
COLOUR_CHANNELS = [
    # name        (a_r, a_g, a_b)  bias
    ("r_minus_g", (1.0, -1.0, 0.0), 0.0),
    ("g_minus_r", (-1.0, 1.0, 0.0), 0.0),
    ("g_minus_b", (0.0, 1.0, -1.0), 0.0),
    ("b_minus_g", (0.0, -1.0, 1.0), 0.0),
    ("r_minus_b", (1.0, 0.0, -1.0), 0.0),
    ("b_minus_r", (-1.0, 0.0, 1.0), 0.0),
    ("luma", LUMA, 0.0),
    ("bright", LUMA, -0.55),
    ("very_bright", LUMA, -0.82),
    ("dark", tuple(-c for c in LUMA), 0.3),
]
N_TEXTURE_FILTERS = 3  # each gives a +/- channel pair
C = 16  # channels of the stem output and of every backbone level
CI = {name: i for i, (name, _, _) in enumerate(COLOUR_CHANNELS)}
STEM_TEX = list(range(len(COLOUR_CHANNELS), len(COLOUR_CHANNELS) + 2 * N_TEXTURE_FILTERS))
assert len(COLOUR_CHANNELS) + 2 * N_TEXTURE_FILTERS == C

# ---- backbone channel layout (after the stem's 1x1 layers) ------------------------------
MEMBER = list(range(NC))  # 0..5 class membership
EXTRA = ["luma", "bright", "dark", "chroma"]  # 6..9
TEX = list(range(NC + len(EXTRA), C))  # 10..15 texture

BLUR3 = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
NEUTRAL = {n: -0.75 for n in ("r_minus_g", "g_minus_r", "g_minus_b",
                              "b_minus_g", "r_minus_b", "b_minus_r")}


def stem_weights(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Conv 3x3 s2, RGB -> 10 colour + 6 texture channels."""
    w = np.zeros((C, 3, 3, 3), np.float64)
    b = np.zeros(C, np.float64)
    for k, (_, coef, bias) in enumerate(COLOUR_CHANNELS):
        for c in range(3):
            w[k, c] = coef[c] * BLUR3
        b[k] = bias
    for f in range(N_TEXTURE_FILTERS):
        kern = rng.standard_normal((3, 3))
        kern -= kern.mean()  # zero response on flat regions
        kern /= np.linalg.norm(kern)
        for sign, k in ((1.0, STEM_TEX[2 * f]), (-1.0, STEM_TEX[2 * f + 1])):
            for c in range(3):
                w[k, c] = sign * LUMA[c] * kern * 2.0
    return w.astype(np.float32), b.astype(np.float32)


def prototype_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stem's two 1x1 layers: prototype units (W1, b1) and membership (W2, b2).

    Prototype units are relu(linear(colour channels)); class membership is
    clip(linear(units), 0, 1), which allows min(x, y) = x - relu(x - y) and similar
    piecewise-linear colour tests.
    """
    units: list[tuple[str, dict[str, float], float]] = []
    for name, _, _ in COLOUR_CHANNELS:  # pass-through (already non-negative)
        units.append((name, {name: 1.0}, 0.0))
    units += [
        ("rg_over_gb", {"r_minus_g": 1.0, "g_minus_b": -1.0}, 0.0),  # min(c0,c2)=c0-u
        ("gb_over_rb", {"g_minus_b": 1.0, "r_minus_b": -1.0}, 0.0),  # min(c2,c4)=c2-u
        ("br_over_bg", {"b_minus_r": 1.0, "b_minus_g": -1.0}, 0.0),  # min(c5,c3)=c5-u
        ("chroma", {n: 0.5 for n in NEUTRAL}, 0.0),  # max(r,g,b) - min(r,g,b)
        ("neutral_bright", {"bright": 1.0, **NEUTRAL}, 0.0),
        ("neutral_very_bright", {"very_bright": 1.0, **NEUTRAL}, 0.0),
        # silver: bright but not very bright, low chroma (a tent on luma)
        ("silver", {"bright": 1.0, "very_bright": -3.0, **NEUTRAL}, 0.0),
    ]
    n_colour_units = len(units)
    ui = {name: i for i, (name, _, _) in enumerate(units)}
    hidden = n_colour_units + len(STEM_TEX)

    w1 = np.zeros((hidden, C), np.float64)
    b1 = np.zeros(hidden, np.float64)
    for h, (_, coefs, bias) in enumerate(units):
        for ch, v in coefs.items():
            w1[h, CI[ch]] = v
        b1[h] = bias
    for i, ch in enumerate(STEM_TEX):  # texture pass-through
        w1[n_colour_units + i, ch] = 1.0

    def row(terms: dict[str, float], norm: float = 1.0) -> np.ndarray:
        r = np.zeros(hidden, np.float64)
        for u, v in terms.items():
            r[ui[u]] += v / norm
        return r

    # Class membership, each about 1.0 on its prototype colour.
    member = [
        # cereal_box: yellow / gold packaging, min(g-b, r-b) minus red
        row({"g_minus_b": 1.0, "gb_over_rb": -1.0, "r_minus_g": -0.5}, 0.7),
        # soda_can: silver / light grey, not white
        row({"silver": 1.0}, 0.15),
        # milk_carton: white, low chroma
        row({"neutral_very_bright": 3.0, "neutral_bright": 1.0}, 0.7),
        # water_bottle: blue, b above r (and above g), not dark
        row({"b_minus_r": 1.0, "br_over_bg": -0.8, "dark": -3.0}, 0.55),
        # apple: red, r above g and b, g and b close
        row({"r_minus_g": 1.0, "g_minus_b": -1.5, "b_minus_g": -1.0}, 0.7),
        # chip_bag: orange, 2*min(r-g, g-b)
        row({"r_minus_g": 2.0, "rg_over_gb": -2.0}, 0.85),
    ]
    extra = [row({name: 1.0}) for name in EXTRA]
    w2 = np.zeros((C, hidden), np.float64)
    w2[: NC + len(EXTRA)] = np.stack(member + extra)
    for i, ch in enumerate(TEX):
        w2[ch, n_colour_units + i] = 1.0
    b2 = np.zeros(C, np.float64)
    return (w1.astype(np.float32), b1.astype(np.float32),
            w2.astype(np.float32), b2.astype(np.float32))


def backbone_weights(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Conv 3x3 s2 stages 2..5: blur membership/colour, mix texture (seeded)."""
    stages = []
    for _ in range(4):
        w = np.zeros((C, C, 3, 3), np.float64)
        for k in range(NC + len(EXTRA)):
            w[k, k] = BLUR3
        mix = np.eye(len(TEX)) + 0.15 * rng.standard_normal((len(TEX), len(TEX)))
        for i, ki in enumerate(TEX):
            for j, kj in enumerate(TEX):
                w[ki, kj] = mix[i, j] * BLUR3
        stages.append((w.astype(np.float32), np.zeros(C, np.float32)))
    return stages


class Graph:
    """Collects nodes and initializers in a fixed order (deterministic output)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        n = self._count.get(prefix, 0)
        self._count[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs,
                                           name=f"/{outs[0]}/{op_type}", **attrs))
        return outs[0] if n_out == 1 else outs


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    g = Graph()
    f32 = np.float32

    pad1 = g.const("pads.edge1", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    pad2 = g.const("pads.edge2", np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64))

    def conv3s2(x: str, w: np.ndarray, b: np.ndarray, tag: str) -> str:
        x = g.op("Pad", [x, pad1], mode="edge")
        x = g.op("Conv", [x, g.const(f"{tag}.weight", w), g.const(f"{tag}.bias", b)],
                 kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
        return g.op("Relu", [x])

    def conv1(x: str, w: np.ndarray, b: np.ndarray, tag: str) -> str:
        return g.op("Conv", [x, g.const(f"{tag}.weight", w[:, :, None, None].astype(f32)),
                             g.const(f"{tag}.bias", b.astype(f32))], kernel_shape=[1, 1])

    # ---- stem (stride 2) -------------------------------------------------------------
    w, b = stem_weights(rng)
    x = conv3s2("images", w, b, "stem.colour")
    w1, b1, w2, b2 = prototype_weights()
    x = g.op("Relu", [conv1(x, w1, b1, "stem.proto")])
    zero = g.const("const.zero", np.array(0.0, f32))
    one = g.const("const.one", np.array(1.0, f32))
    x = g.op("Clip", [conv1(x, w2, b2, "stem.member"), zero, one])

    # ---- backbone (strides 4..32) ----------------------------------------------------
    feats = {}
    for i, (w, b) in enumerate(backbone_weights(rng)):
        x = conv3s2(x, w, b, f"backbone.{i}")
        feats[4 * 2**i] = x

    # ---- heads -----------------------------------------------------------------------
    surround_w = g.const("head.surround.weight", np.full((C, 1, 5, 5), 1 / 25, f32))
    half = g.const("const.half", np.array(0.5, f32))
    penalty = g.const("const.peak_penalty", np.array(PEAK_PENALTY, f32))
    clip_lo = g.const("const.clip_lo", np.array(-1.0, f32))
    clip_hi = g.const("const.clip_hi", np.array(1.0, f32))

    level_outputs = []
    for stride in STRIDES:
        n = IMGSZ // stride
        tag = f"head.p{stride}"
        f = feats[stride]

        # Class scores: centre-surround membership, peak test, sigmoid.
        s = g.op("Pad", [f, pad2], mode="edge")
        s = g.op("Conv", [s, surround_w], kernel_shape=[5, 5], group=C, pads=[0, 0, 0, 0])
        w_cls = np.zeros((NC, 2 * C), np.float64)
        for k in range(NC):
            w_cls[k, MEMBER[k]] = GAIN
            w_cls[k, C + MEMBER[k]] = -GAIN * BETA
        b_cls = np.full(NC, LEVEL_BIAS[stride], np.float64)
        logit = conv1(g.op("Concat", [f, s], axis=1), w_cls, b_cls, f"{tag}.cls")
        jitter = rng.uniform(0.0, 1e-3, (1, 1, n, n)).astype(f32)
        logit = g.op("Add", [logit, g.const(f"{tag}.jitter", jitter)])
        peak = g.op("MaxPool", [logit], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        is_peak = g.op("Cast", [g.op("Equal", [logit, peak])], to=TensorProto.FLOAT)
        logit = g.op("Add", [logit, g.op("Mul", [g.op("Sub", [is_peak, one]), penalty])])
        cls = g.op("Sigmoid", [logit])

        # Boxes: a 1x1 conv with seeded weights on the cell features plus hand-set terms
        # on the surround (a class colour filling the surround widens the box), then the
        # YOLOv8-style decode without DFL.
        w_box = np.zeros((4, 2 * C), np.float64)
        w_box[:, :C] = rng.standard_normal((4, C)) * BOX_WEIGHT_STD
        w_box[2:, C + np.array(MEMBER)] += BOX_SURROUND_GAIN
        b_box = np.array([0.0, 0.0, BOX_BIAS, BOX_BIAS])
        t = conv1(g.op("Concat", [f, s], axis=1), w_box, b_box, f"{tag}.box")
        split = g.const(f"{tag}.split", np.array([2, 2], np.int64))
        t_xy, t_wh = g.op("Split", [t, split], n_out=2, axis=1)
        gy, gx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grid = np.stack([gx, gy])[None].astype(f32) + 0.5  # [1,2,n,n] cell centres
        xy = g.op("Mul", [g.op("Tanh", [t_xy]), half])
        xy = g.op("Add", [xy, g.const(f"{tag}.grid", grid)])
        xy = g.op("Mul", [xy, g.const(f"{tag}.stride", np.array(stride, f32))])
        wh = g.op("Exp", [g.op("Clip", [t_wh, clip_lo, clip_hi])])
        wh = g.op("Mul", [wh, g.const(f"{tag}.box_size", np.array(stride * BOX_SCALE, f32))])

        lvl = g.op("Concat", [xy, wh, cls], axis=1)
        shape = g.const(f"{tag}.shape", np.array([1, 4 + NC, n * n], np.int64))
        level_outputs.append(g.op("Reshape", [lvl, shape]))

    g.nodes.append(helper.make_node("Concat", level_outputs, ["output0"], axis=2,
                                    name="/output0/Concat"))

    n_anchors = sum((IMGSZ // s) ** 2 for s in STRIDES)
    graph = helper.make_graph(
        g.nodes,
        "framesift_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + NC, n_anchors])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="framesift build_standin.py",
        producer_version=VERSION,
        doc_string=DESCRIPTION,
    )
    model.ir_version = IR_VERSION
    names = "{" + ", ".join(f"{i}: {n!r}" for i, n in enumerate(NAMES)) + "}"
    helper.set_model_props(model, {
        "description": DESCRIPTION,
        "author": "framesift",
        "version": VERSION,
        "stride": str(max(STRIDES)),
        "task": "detect",
        "head": "Detect",
        "batch": "1",
        "imgsz": f"[{IMGSZ}, {IMGSZ}]",
        "names": names,
        "channels": "3",
        "end2end": "False",
    })
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def main(argv: list[str] | None = None) -> int:
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=default_out,
                   help="output path (default: models/standin/model.onnx)")
    args = p.parse_args(argv)
    model = build()
    data = model.SerializeToString(deterministic=True)
    with open(args.out, "wb") as fh:
        fh.write(data)
    print(f"wrote {args.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
