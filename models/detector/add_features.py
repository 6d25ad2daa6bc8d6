"""Add the pooled-feature output (features.py) to an exported detector that lacks it, and
update its manifest's sha256 — for a model.onnx exported before the output existed; a
fresh train.py export has it already. Needs only `onnx` (no torch).

    python3 models/detector/add_features.py models/detector/model.onnx
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper, shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
import features  # noqa: E402

# The neck outputs of net.Detector as export_onnx names them: o3, o4, o5.
NECKS = ["silu_26", "silu_31", "silu_36"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--manifest", type=Path, help="default: model.toml beside the model")
    args = ap.parse_args()
    m = onnx.load(args.model)
    if any(o.name == features.OUTPUT for o in m.graph.output):
        sys.exit(f"{args.model} already has a {features.OUTPUT} output")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in shape_inference.infer_shapes(m).graph.value_info}
    missing = [n for n in NECKS if n not in shapes]
    if missing:
        sys.exit(f"{args.model} has no {missing}: not a framesift detector export")
    width = sum(shapes[n][1] for n in NECKS)
    m.graph.node.extend(features.nodes(helper, NECKS))
    m.graph.output.append(features.value_info(helper, TensorProto, width))
    onnx.checker.check_model(m, full_check=True)
    data = m.SerializeToString(deterministic=True)
    args.model.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = args.manifest or args.model.with_name("model.toml")
    text = manifest.read_text()
    text = re.sub(r'^sha256 = "[0-9a-f]+"', f'sha256 = "{sha}"', text, count=1, flags=re.M)
    if "features_output" not in text:
        text = text.replace('output_name = "output0"\n',
                            f'output_name = "output0"\nfeatures_output = "{features.OUTPUT}"  # [1, {width}] pooled neck features\n')
    manifest.write_text(text)
    print(f"{args.model}: {features.OUTPUT} [1, {width}], sha256 {sha}")


if __name__ == "__main__":
    main()
