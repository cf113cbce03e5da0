"""`export.int8_scope`: which convolutions an INT8 export keeps float32 (the stem and the shortcuts), and that
ONNX Runtime's and NNCF's quantizers really leave them, the additions and the head unquantized under
`branches`, and quantize them under `all`. A small residual network in ONNX, built by hand, quantized for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from transferkit.errors import ConfigError
from transferkit.exporting.int8 import float_convs, quantize_onnx
from transferkit.planning.checkpoint import choose_int8_scope

C, SIZE = 4, 8


def conv(name: str, source: str, out: str, rng, c_in: int = C) -> tuple:
    weight = numpy_helper.from_array(rng.standard_normal((C, c_in, 3, 3)).astype(np.float32) * 0.3, name + ".w")
    return helper.make_node("Conv", [source, weight.name], [out], name=name, pads=[1, 1, 1, 1]), weight


def residual_net(path: Path) -> Path:
    """images -> stem Conv, Relu, MaxPool -> block 1 (branch a, b; shortcut Conv) -> Add -> Relu -> block 2
    (branch c, d; identity) -> Add -> ReduceMean -> head Gemm."""
    rng = np.random.default_rng(0)
    nodes, weights = [], []
    for name, source, out, c_in in [("stem", "images", "s", 1), ("a", "p", "a", C), ("b", "ar", "b", C),
                                    ("shortcut", "p", "sc", C), ("c", "r1", "c", C), ("d", "cr", "d", C)]:
        node, weight = conv(name, source, out, rng, c_in)
        nodes.append(node)
        weights.append(weight)
    nodes[1:1] = [helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
                  helper.make_node("MaxPool", ["sr"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    head = numpy_helper.from_array(rng.standard_normal((3, C)).astype(np.float32), "head.w")
    nodes += [helper.make_node("Relu", ["a"], ["ar"], name="a_relu"), helper.make_node("Add", ["b", "sc"], ["x1"], name="add1"),
              helper.make_node("Relu", ["x1"], ["r1"], name="r1_relu"), helper.make_node("Relu", ["c"], ["cr"], name="c_relu"),
              helper.make_node("Add", ["d", "r1"], ["x2"], name="add2"),
              helper.make_node("ReduceMean", ["x2", "axes"], ["m"], name="mean", keepdims=0),
              helper.make_node("Gemm", ["m", "head.w"], ["logits"], name="head", transB=1)]
    order = ["stem", "stem_relu", "pool", "a", "a_relu", "b", "shortcut", "add1", "r1_relu", "c", "c_relu", "d",
             "add2", "mean", "head"]
    nodes.sort(key=lambda n: order.index(n.name))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              [*weights, head, numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    import onnx

    onnx.save(model, str(path))
    return path


@pytest.fixture
def net(tmp_path) -> Path:
    return residual_net(tmp_path / "net.onnx")


def calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal((4, 1, SIZE, SIZE)).astype(np.float32) for _ in range(3)]


def test_the_stem_and_the_shortcut_convolutions_are_kept_float(net):
    assert float_convs(net) == {"stem": ["stem"], "shortcut": ["shortcut"]}


def quantized_weights(path: Path) -> set[str]:
    """The float weights whose int8 copy a DequantizeLinear reads (the nodes that run in int8)."""
    import onnx

    model = onnx.load(str(path))
    return {node.output[0].split("_DequantizeLinear")[0] for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized")}


def test_branches_quantizes_only_the_branch_convolutions_and_all_quantizes_everything(net, tmp_path):
    record = quantize_onnx(net, tmp_path / "branches.onnx", calibration(), "branches")
    assert quantized_weights(tmp_path / "branches.onnx") == {"a.w", "b.w", "c.w", "d.w"}
    assert record["float_convs"] == {"stem": ["stem"], "shortcut": ["shortcut"]} and record["scope"].startswith("branches")
    import onnx

    adds = [n for n in onnx.load(str(tmp_path / "branches.onnx")).graph.node if n.op_type == "Add"]
    assert adds  # the residual additions stay float Add nodes
    quantize_onnx(net, tmp_path / "all.onnx", calibration(), "all")
    assert quantized_weights(tmp_path / "all.onnx") >= {"stem.w", "a.w", "b.w", "shortcut.w", "c.w", "d.w", "head.w"}


def test_nncf_branches_leaves_the_stem_shortcut_and_head_without_fake_quantize(net):
    pytest.importorskip("nncf")
    import openvino as ov

    from transferkit.exporting.int8 import quantize_openvino

    model, record = quantize_openvino(ov.convert_model(str(net)), calibration(), float_convs(net))
    fed = {op.get_friendly_name().split("/")[0] for op in model.get_ops()
           if op.get_type_name() in ("Convolution", "MatMul")
           and any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())}
    assert fed == {"a", "b", "c", "d"} and record["bias_correction"] is False
    everything, _ = quantize_openvino(ov.convert_model(str(net)), calibration(), None)
    assert sum(op.get_type_name() == "FakeQuantize" for op in everything.get_ops()) > \
        sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def test_int8_scope_auto_is_chosen_at_export_and_a_bad_scope_names_the_key():
    assert choose_int8_scope("auto") == "auto" and choose_int8_scope(None) == "auto"
    assert choose_int8_scope("branches") == "branches" and choose_int8_scope("all") == "all"
    with pytest.raises(ConfigError, match=r"export.int8_scope='layers' is unknown"):
        choose_int8_scope("layers")
