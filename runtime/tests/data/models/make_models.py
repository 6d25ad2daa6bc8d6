"""Build the tiny ONNX models the integration tests load, one per output layout.

Each model ignores its pixels (the output is a constant plus 0 x mean(input), so the
input is used) and returns hand-written candidate boxes, so the tests can check decoding,
NMS and the letterbox mapping against hand-computed numbers.

    pip install -r runtime/tests/data/models/requirements.txt
    python3 runtime/tests/data/models/make_models.py

Input: images [1, 3, 64, 64] (dynamic.onnx: [1, 3, height, width]). Class names: ["a", "b"].
"""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).parent
NAMES = "{0: 'a', 1: 'b'}"


def constant_model(path, output, metadata, input_size=64, input_dims=None):
    output = np.asarray(output, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "framesift-test",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, input_dims or [1, 3, input_size, input_size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "table"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="framesift-tests")
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


meta = {"names": NAMES, "imgsz": "[64, 64]", "stride": "32", "task": "detect"}

# YOLOv8 [1, 4+2, 4]: columns are anchors; rows cx, cy, w, h, score a, score b.
#  anchor 0: class a 0.9 at (32, 32) 20x10 (class b 0.1)
#  anchor 1: class a 0.8, same box shifted 1 px -> suppressed by NMS
#  anchor 2: class b 0.6 at (10, 40) 8x8 (class a 0.05)
#  anchor 3: class b 0.05 -> below the threshold and the uncertainty band, above
#            faint's floor (0.04)
v8 = np.array(
    [
        [32, 33, 10, 50],
        [32, 32, 40, 20],
        [20, 20, 8, 4],
        [10, 10, 8, 4],
        [0.9, 0.8, 0.05, 0.0],
        [0.1, 0.0, 0.6, 0.05],
    ],
    dtype=np.float32,
)[None]
constant_model(HERE / "v8.onnx", v8, meta)

# YOLOv5 [1, 3, 5+2]: cx, cy, w, h, objectness, score a, score b.
#  0: obj 0.9 x b 0.8 = 0.72 at (32, 32) 20x10 -> class b
#  1: obj 0.5 x a 0.4 = 0.20 -> below 0.25
#  2: obj 0.9 x a 0.5 = 0.45 at (48, 20) 8x8 -> class a
v5 = np.array(
    [
        [32, 32, 20, 10, 0.9, 0.1, 0.8],
        [10, 10, 4, 4, 0.5, 0.4, 0.0],
        [48, 20, 8, 8, 0.9, 0.5, 0.2],
    ],
    dtype=np.float32,
)[None]
constant_model(HERE / "v5.onnx", v5, meta)

# End-to-end [1, 3, 6]: x1, y1, x2, y2, score, class; two overlapping class-a boxes both
# survive (no NMS), the third is below threshold.
e2e = np.array(
    [
        [22, 27, 42, 37, 0.9, 0],
        [23, 27, 43, 37, 0.7, 0],
        [0, 0, 4, 4, 0.05, 1],
    ],
    dtype=np.float32,
)[None]
constant_model(HERE / "e2e.onnx", e2e, meta)

# No metadata and no manifest: framesift must say which manifest keys to write.
constant_model(HERE / "bare.onnx", v8, {})

# A layout framesift does not support: [1, 9, 9] with 2 classes (not 4+2, 5+2 or 6).
constant_model(HERE / "odd.onnx", np.zeros((1, 9, 9), np.float32), meta)

# Input size left open ([1, 3, height, width]), as a dynamic Ultralytics export: the
# manifest beside it (dynamic.toml) must give the size.
constant_model(HERE / "dynamic.onnx", v8, {}, input_dims=[1, 3, "height", "width"])
