"""The framesift product detector: a small YOLOv8-style anchor-free network, its
training loss (task-aligned assignment, BCE + CIoU) and an ONNX writer.

The ONNX graph is written node by node with the `onnx` helper API from the trained
weights (BatchNorm folded into the convolutions), not with `torch.onnx.export`: the
graph is small, the file is byte-for-byte reproducible, and no exporter-version
behaviour leaks into it. `train.py` checks that ONNX Runtime's output matches PyTorch's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STRIDES = (8, 16, 32)


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f with one bottleneck: 1x1 -> split -> bottleneck -> concat -> 1x1."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        self.h = c2 // 2
        self.cv1 = Conv(c1, 2 * self.h, 1)
        self.m = Bottleneck(self.h) if shortcut else nn.Sequential(
            Conv(self.h, self.h, 3), Conv(self.h, self.h, 3))
        self.cv2 = Conv(3 * self.h, c2, 1)
        self.shortcut = shortcut

    def forward(self, x):
        a, b = self.cv1(x).split(self.h, 1)
        return self.cv2(torch.cat([a, b, self.m(b)], 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        h = c1 // 2
        self.cv1 = Conv(c1, h, 1)
        self.cv2 = Conv(4 * h, c2, 1)

    def forward(self, x):
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        y3 = F.max_pool2d(y2, 5, 1, 2)
        return self.cv2(torch.cat([x, y1, y2, y3], 1))


class Head(nn.Module):
    """Decoupled head for one level: box branch (4 ltrb distances) and class branch."""

    def __init__(self, c: int, hidden: int, nc: int, stride: int):
        super().__init__()
        self.box = nn.Sequential(Conv(c, hidden, 3), nn.Conv2d(hidden, 4, 1))
        self.cls = nn.Sequential(Conv(c, hidden, 3), nn.Conv2d(hidden, nc, 1))
        # Priors: ~0.01 class probability; distances ~ softplus(0.5) * stride.
        nn.init.constant_(self.cls[-1].bias, math.log(5 / nc / (320 / stride) ** 2))
        nn.init.constant_(self.box[-1].bias, 0.5)

    def forward(self, x):
        return self.box(x), self.cls(x)


class Detector(nn.Module):
    """Backbone (stride 2..32) + PAN neck + decoupled heads at strides 8/16/32.

    forward(x) in training mode returns raw per-level (box, cls) maps; `predict`
    returns the exported layout [B, 4 + nc, N]: cx, cy, w, h (input pixels) and
    sigmoid class scores, anchors stride 8 row-major, then 16, then 32.
    """

    def __init__(self, nc: int = 6, width=(16, 24, 40, 56, 64), head_hidden=(32, 32, 32)):
        super().__init__()
        c0, c1, c2, c3, c4 = width
        self.nc = nc
        self.stem = Conv(3, c0, 3, 2)                                          # /2
        self.b1 = nn.Sequential(Conv(c0, c1, 3, 2))                            # /4
        self.b2 = nn.Sequential(Conv(c1, c2, 3, 2), C2f(c2, c2))               # /8  P3
        self.b3 = nn.Sequential(Conv(c2, c3, 3, 2), C2f(c3, c3))               # /16 P4
        self.b4 = nn.Sequential(Conv(c3, c4, 3, 2), C2f(c4, c4), SPPF(c4, c4))  # /32 P5
        self.td4 = C2f(c4 + c3, c3, shortcut=False)
        self.td3 = C2f(c3 + c2, c2, shortcut=False)
        self.down3 = Conv(c2, c2, 3, 2)
        self.bu4 = C2f(c2 + c3, c3, shortcut=False)
        self.down4 = Conv(c3, c3, 3, 2)
        self.bu5 = C2f(c3 + c4, c4, shortcut=False)
        self.heads = nn.ModuleList(
            Head(c, h, nc, s) for c, h, s in zip((c2, c3, c4), head_hidden, STRIDES))

    def features(self, x):
        x = self.stem(x)
        x = self.b1(x)
        p3 = self.b2(x)
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        n4 = self.td4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        o3 = self.td3(torch.cat([F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3], 1))
        o4 = self.bu4(torch.cat([self.down3(o3), n4], 1))
        o5 = self.bu5(torch.cat([self.down4(o4), p5], 1))
        return [o3, o4, o5]

    def forward(self, x):
        return [h(f) for h, f in zip(self.heads, self.features(x))]

    @staticmethod
    def flatten(outs):
        """Per-level (box [B,4,H,W], cls [B,nc,H,W]) -> box [B,N,4], cls [B,N,nc]."""
        box = torch.cat([b.flatten(2) for b, _ in outs], 2).transpose(1, 2)
        cls = torch.cat([c.flatten(2) for _, c in outs], 2).transpose(1, 2)
        return box, cls

    def predict(self, x):
        outs = self(x)
        anchors, strides = make_anchors(outs)
        box, cls = self.flatten(outs)
        xyxy = dist_to_xyxy(box, anchors, strides)
        cxcywh = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)
        return torch.cat([cxcywh, cls.sigmoid()], -1).transpose(1, 2)


def make_anchors(outs):
    """Anchor centres (input pixels) [N,2] and strides [N,1], stride-8 level first."""
    pts, strides = [], []
    for (b, _), s in zip(outs, STRIDES):
        h, w = b.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                torch.arange(w, dtype=torch.float32), indexing="ij")
        pts.append(torch.stack([(xs.flatten() + 0.5) * s, (ys.flatten() + 0.5) * s], 1))
        strides.append(torch.full((h * w, 1), float(s)))
    return torch.cat(pts), torch.cat(strides)


def dist_to_xyxy(raw, anchors, strides):
    """raw ltrb [B,N,4] -> xyxy [B,N,4]: distance = softplus(raw) * stride."""
    d = F.softplus(raw) * strides
    return torch.cat([anchors - d[..., :2], anchors + d[..., 2:]], -1)


# ---------------------------------------------------------------------------
# Loss: task-aligned assignment (YOLOv8's TAL, simplified), BCE + CIoU
# ---------------------------------------------------------------------------

def bbox_iou(a, b, ciou: bool = False, eps: float = 1e-7):
    """Elementwise IoU (or CIoU) of xyxy boxes a, b [..., 4]."""
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(0) * \
            (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(0)
    w1, h1 = ax2 - ax1, ay2 - ay1 + eps
    w2, h2 = bx2 - bx1, by2 - by1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = torch.max(ax2, bx2) - torch.min(ax1, bx1)
    ch = torch.max(ay2, by2) - torch.min(ay1, by1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@torch.no_grad()
def assign(pred_scores, pred_boxes, anchors, strides, gt_boxes, gt_cls, gt_mask,
           topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
    """Task-aligned assignment.

    pred_scores [B,N,nc] (sigmoid), pred_boxes [B,N,4] xyxy, anchors [N,2], strides [N,1],
    gt_boxes [B,M,4] xyxy, gt_cls [B,M] long, gt_mask [B,M] bool.
    Returns target_boxes [B,N,4], target_scores [B,N,nc], fg [B,N] bool.
    """
    B, N, nc = pred_scores.shape
    M = gt_boxes.shape[1]
    if M == 0:
        return (torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores),
                torch.zeros(B, N, dtype=torch.bool))
    # Candidates: anchor centre inside the GT box (tiny boxes: within half a stride).
    ax, ay = anchors[:, 0].view(1, 1, N), anchors[:, 1].view(1, 1, N)
    half = strides.view(1, 1, N) * 0.5
    cx = (gt_boxes[..., 0] + gt_boxes[..., 2]).unsqueeze(-1) / 2
    cy = (gt_boxes[..., 1] + gt_boxes[..., 3]).unsqueeze(-1) / 2
    inside = ((ax > gt_boxes[..., 0:1]) & (ax < gt_boxes[..., 2:3]) &
              (ay > gt_boxes[..., 1:2]) & (ay < gt_boxes[..., 3:4]))
    near = ((ax - cx).abs() <= half) & ((ay - cy).abs() <= half)
    cand = (inside | near) & gt_mask.unsqueeze(-1)                          # [B,M,N]

    ious = bbox_iou(gt_boxes.unsqueeze(2), pred_boxes.unsqueeze(1)).clamp(0)  # [B,M,N]
    cls_idx = gt_cls.clamp(0).unsqueeze(-1).expand(B, M, N)
    sc = pred_scores.transpose(1, 2).gather(1, cls_idx)                      # [B,M,N]
    metric = sc.pow(alpha) * ious.pow(beta) * cand
    # top-k candidates per GT (ties broken by index: deterministic).
    top = metric.topk(min(topk, N), dim=-1).indices
    sel = torch.zeros_like(cand).scatter_(-1, top, True) & cand
    # Always keep the best candidate (by centre distance) so every GT gets an anchor.
    dist = (ax - cx) ** 2 + (ay - cy) ** 2 + (~cand) * 1e9
    nearest = dist.argmin(-1, keepdim=True)
    sel.scatter_(-1, nearest, True)
    sel &= gt_mask.unsqueeze(-1)
    # An anchor claimed by several GTs goes to the one it overlaps most.
    multi = sel.sum(1) > 1                                                   # [B,N]
    if multi.any():
        best = (ious * sel).argmax(1)                                        # [B,N]
        one = F.one_hot(best, M).transpose(1, 2).bool()
        sel = torch.where(multi.unsqueeze(1), one & sel, sel)
    fg = sel.any(1)                                                          # [B,N]
    gt_idx = sel.float().argmax(1)                                           # [B,N]
    bidx = torch.arange(B).unsqueeze(1)
    target_boxes = gt_boxes[bidx, gt_idx]                                    # [B,N,4]
    target_cls = gt_cls[bidx, gt_idx].clamp(0)                               # [B,N]
    # Soft targets: alignment metric normalised per GT to that GT's best IoU.
    metric = metric * sel
    pos_metric = metric.amax(-1, keepdim=True)
    pos_iou = (ious * sel).amax(-1, keepdim=True)
    norm = (metric * pos_iou / (pos_metric + eps)).amax(1)                   # [B,N]
    target_scores = F.one_hot(target_cls, nc).float() * (norm * fg).unsqueeze(-1)
    return target_boxes, target_scores, fg


def detection_loss(outs, gt_boxes, gt_cls, gt_mask, box_gain=7.5, cls_gain=0.5):
    anchors, strides = make_anchors(outs)
    box_raw, cls_raw = Detector.flatten(outs)
    pred_boxes = dist_to_xyxy(box_raw, anchors, strides)
    t_boxes, t_scores, fg = assign(cls_raw.detach().sigmoid(), pred_boxes.detach(), anchors,
                                   strides, gt_boxes, gt_cls, gt_mask)
    norm = t_scores.sum().clamp(min=1.0)
    loss_cls = F.binary_cross_entropy_with_logits(cls_raw, t_scores, reduction="sum") / norm
    if fg.any():
        weight = t_scores.sum(-1)[fg]
        ciou = bbox_iou(pred_boxes[fg], t_boxes[fg], ciou=True)
        loss_box = ((1.0 - ciou) * weight).sum() / norm
    else:
        loss_box = box_raw.sum() * 0.0
    return box_gain * loss_box + cls_gain * loss_cls, loss_box.detach(), loss_cls.detach()


# ---------------------------------------------------------------------------
# ONNX writer
# ---------------------------------------------------------------------------

def fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d | None):
    """Fold BatchNorm into the convolution -> (weight, bias) float32 arrays."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return w.float().numpy(), b.float().numpy()


class OnnxWriter:
    def __init__(self):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.counter = [], [], {}

    def name(self, prefix: str) -> str:
        n = self.counter.get(prefix, 0)
        self.counter[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, prefix: str, arr: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs, prefix: str | None = None, outputs: list[str] | None = None, **attrs):
        outs = outputs or [self.name(prefix or op.lower())]
        self.nodes.append(self.helper.make_node(op, list(inputs), outs, name=self.name("n_" + op), **attrs))
        return outs[0] if len(outs) == 1 else outs

    # modules ------------------------------------------------------------
    def conv(self, x: str, m: Conv | nn.Conv2d, act: bool = True) -> str:
        conv, bn = (m.conv, m.bn) if isinstance(m, Conv) else (m, None)
        w, b = fuse(conv, bn)
        k = conv.kernel_size[0]
        y = self.node("Conv", [x, self.const("w", w), self.const("b", b)], "conv",
                      kernel_shape=[k, k], strides=list(conv.stride), pads=[k // 2] * 4)
        if not act:
            return y
        return self.node("Mul", [y, self.node("Sigmoid", [y], "sig")], "silu")

    def c2f(self, x: str, m: C2f) -> str:
        y = self.conv(x, m.cv1)
        split = self.const("split", np.array([m.h, m.h], np.int64))
        a, b = self.node("Split", [y, split], outputs=[self.name("split_a"), self.name("split_b")], axis=1)
        if m.shortcut:
            c = self.node("Add", [b, self.conv(self.conv(b, m.m.cv1), m.m.cv2)], "res")
        else:
            c = self.conv(self.conv(b, m.m[0]), m.m[1])
        return self.conv(self.node("Concat", [a, b, c], "cat", axis=1), m.cv2)

    def sppf(self, x: str, m: SPPF) -> str:
        x = self.conv(x, m.cv1)
        ys = [x]
        for _ in range(3):
            ys.append(self.node("MaxPool", [ys[-1]], "pool", kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
        return self.conv(self.node("Concat", ys, "cat", axis=1), m.cv2)

    def seq(self, x: str, seq: nn.Sequential) -> str:
        for m in seq:
            if isinstance(m, Conv):
                x = self.conv(x, m)
            elif isinstance(m, C2f):
                x = self.c2f(x, m)
            elif isinstance(m, SPPF):
                x = self.sppf(x, m)
            elif isinstance(m, nn.Conv2d):
                x = self.conv(x, m, act=False)
            else:
                raise TypeError(type(m))
        return x

    def up(self, x: str) -> str:
        scales = self.const("scales", np.array([1.0, 1.0, 2.0, 2.0], np.float32))
        return self.node("Resize", [x, "", scales], "up", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def write_backbone(w: OnnxWriter, model: Detector) -> list[str]:
    """Backbone and neck into `w`, in the one order every convolution is written in;
    -> the neck outputs P3, P4, P5."""
    x = w.conv("images", model.stem)
    x = w.seq(x, model.b1)
    p3 = w.seq(x, model.b2)
    p4 = w.seq(p3, model.b3)
    p5 = w.seq(p4, model.b4)
    n4 = w.c2f(w.node("Concat", [w.up(p5), p4], "cat", axis=1), model.td4)
    o3 = w.c2f(w.node("Concat", [w.up(n4), p3], "cat", axis=1), model.td3)
    o4 = w.c2f(w.node("Concat", [w.conv(o3, model.down3), n4], "cat", axis=1), model.bu4)
    o5 = w.c2f(w.node("Concat", [w.conv(o4, model.down4), p5], "cat", axis=1), model.bu5)
    return [o3, o4, o5]


def write_heads(w: OnnxWriter, model: Detector, necks: list[str]) -> list[str]:
    """The heads' box and class branches, level by level -> their raw outputs."""
    return [w.seq(f, branch) for f, head in zip(necks, model.heads) for branch in (head.box, head.cls)]


class _ConvOrder(OnnxWriter):
    """Walks the network as export_onnx does and notes each convolution module, in the
    order of the exported graph's Conv nodes."""

    def __init__(self):
        super().__init__()
        self.convs: list[Conv | nn.Conv2d] = []

    def conv(self, x: str, m: Conv | nn.Conv2d, act: bool = True) -> str:
        self.convs.append(m)
        return super().conv(x, m, act)


def load_onnx(model: Detector, path) -> Detector:
    """Load the weights of a model.onnx this module exported into `model`.

    The file holds BatchNorm folded into each convolution, so a Conv module gets the
    folded weight and bias, and its BatchNorm becomes the identity plus that bias (mean 0,
    variance 1 - eps, scale 1): the network computes exactly what the file does, and
    exporting it again folds nothing new. Keep those BatchNorms in eval mode when
    fine-tuning (`freeze_batchnorm`): their statistics are not the data's."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    order = _ConvOrder()
    necks = write_backbone(order, model)
    write_heads(order, model, necks)
    if len(convs) != len(order.convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, this network has {len(order.convs)}")
    with torch.no_grad():
        for node, m in zip(convs, order.convs):
            conv, bn = (m.conv, m.bn) if isinstance(m, Conv) else (m, None)
            wt, b = inits[node.input[1]], inits[node.input[2]]
            if tuple(wt.shape) != tuple(conv.weight.shape):
                raise ValueError(f"{path}: {node.name} has weights {wt.shape}, expected "
                                 f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(wt.copy()))
            if bn is None:
                conv.bias.copy_(torch.from_numpy(b.copy()))
            else:
                bn.weight.fill_(1.0)
                bn.bias.copy_(torch.from_numpy(b.copy()))
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
    return model


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (after model.train()): fine-tuning on small
    batches then keeps the loaded statistics and trains only scale and shift."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def export_onnx(model: Detector, path, size: int = 320, metadata: dict[str, str] | None = None):
    """Write `model` (eval mode) as ONNX opset 17: images [1,3,size,size] -> output0 [1,4+nc,N]
    and features [1,C] (the pooled neck outputs, features.py)."""
    import onnx
    from onnx import TensorProto, helper

    model = model.eval()
    w = OnnxWriter()
    o3, o4, o5 = write_backbone(w, model)
    nc = model.nc
    raw = write_heads(w, model, [o3, o4, o5])
    boxes, scores, n_total = [], [], 0
    for level, s in enumerate(STRIDES):
        g = size // s
        n_total += g * g
        shape = w.const("shape", np.array([1, -1, g * g], np.int64))
        boxes.append(w.node("Reshape", [raw[2 * level], shape], "box"))
        scores.append(w.node("Reshape", [raw[2 * level + 1], shape], "cls"))
    box = w.node("Concat", boxes, "box", axis=2)                    # [1,4,N] raw ltrb
    cls = w.node("Sigmoid", [w.node("Concat", scores, "cls", axis=2)], "scores")
    dist = w.node("Softplus", [box], "dist")
    # Stride per anchor and anchor centres as constants; cx = ax + (r - l)/2 * s, w = (l + r) * s.
    g_anchors, g_strides = [], []
    for s in STRIDES:
        g = size // s
        ys, xs = np.meshgrid(np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32), indexing="ij")
        g_anchors.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s]))
        g_strides.append(np.full(g * g, s, np.float32))
    stride_row = np.concatenate(g_strides)[None, None, :]                          # [1,1,N]
    anchor_rows = np.concatenate([np.concatenate(g_anchors, 1), np.zeros((2, n_total), np.float32)])[None]  # [1,4,N]
    mix = np.array([[-0.5, 0.0, 0.5, 0.0],
                    [0.0, -0.5, 0.0, 0.5],
                    [1.0, 0.0, 1.0, 0.0],
                    [0.0, 1.0, 0.0, 1.0]], np.float32)
    d_px = w.node("Mul", [dist, w.const("strides", stride_row)], "dist_px")
    xywh = w.node("Add", [w.node("MatMul", [w.const("mix", mix), d_px], "mix"),
                          w.const("anchors", anchor_rows)], "xywh")
    w.node("Concat", [xywh, cls], axis=1, outputs=["output0"])
    # The pooled neck features, for the runtime's novelty signal (features.py).
    import features
    w.nodes.extend(features.nodes(helper, [o3, o4, o5]))
    width = sum(c2f.cv2.conv.out_channels for c2f in (model.td3, model.bu4, model.bu5))

    graph = helper.make_graph(
        w.nodes, "framesift_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, n_total]),
         features.value_info(helper, TensorProto, width)],
        w.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                          producer_name="framesift-train", producer_version="1")
    m.ir_version = 8
    for k, v in (metadata or {}).items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m, full_check=True)
    with open(path, "wb") as fh:
        fh.write(m.SerializeToString(deterministic=True))
    return n_total
