"""The detector's pooled-feature output, shared by the export (net.py) and by
add_features.py (which adds it to an exported model.onnx without torch).

`features` [1, C3+C4+C5]: the global maximum of each channel of the neck outputs the heads
read (P3, P4, P5 after SiLU), concatenated — a compact embedding of what the model sees in
the frame, which framesift's novelty signal compares frames by. The maximum, not the mean:
an object in one corner moves a channel's maximum but barely its mean over the frame
(`framesift evaluate --seed 11`, novelty alone: lift_misses 1.94 with maxima, 1.02 with
means).
"""
from __future__ import annotations

OUTPUT = "features"


def nodes(helper, necks: list[str]):
    """The nodes that pool the neck outputs `necks` into OUTPUT; fixed names, so both ways
    of adding them give the same graph."""
    pooled = [f"features_max_{i}" for i in range(len(necks))]
    out = [helper.make_node("GlobalMaxPool", [x], [p], name=f"n_features_max_{i}")
           for i, (x, p) in enumerate(zip(necks, pooled))]
    out.append(helper.make_node("Concat", pooled, ["features_cat"], name="n_features_cat", axis=1))
    out.append(helper.make_node("Flatten", ["features_cat"], [OUTPUT], name="n_features", axis=1))
    return out


def value_info(helper, tensor_proto, width: int):
    return helper.make_tensor_value_info(OUTPUT, tensor_proto.FLOAT, [1, width])
