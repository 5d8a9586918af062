"""The harness' own judgements (int8 coverage, error lines, data files) on hand-made inputs, so a green zoo
pipeline test means what it says."""

from __future__ import annotations

import numpy as np
import pytest

from .data import Split
from .harness import first_error_line, onnx_coverage, write_npz


def _conv_graph(tmp_path, quantized: bool):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    nodes, inits = [], [w]
    x, weight = "x", "w"
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z"),
                  numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "wq")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"])]
        x, weight = "xd", "wd"
    nodes.append(helper.make_node("Conv", [x, weight], ["y"], name="conv"))
    nodes.append(helper.make_node("GRU", ["y2", "W", "R"], ["h"], name="gru"))  # no int8 kernel: exempt
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / f"m{int(quantized)}.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_onnx_coverage_counts_qdq_conv_as_int8_and_float_conv_as_float(tmp_path):
    q = onnx_coverage(_conv_graph(tmp_path, quantized=True))
    f = onnx_coverage(_conv_graph(tmp_path, quantized=False))
    assert (q.total, q.int8, q.all_int8) == (1, 1, True)
    assert (f.total, f.int8, f.all_int8, f.float_ops) == (1, 0, False, ["Conv:conv"])
    assert q.exempt == ["GRU:gru"]


def test_first_error_line_finds_the_cli_line_without_colour():
    err = "some log\n\x1b[31merror: no TFLite mapping for op 'pad'\x1b[0m\nmore"
    assert first_error_line(err) == "error: no TFLite mapping for op 'pad'"
    assert first_error_line("Traceback...\nValueError: boom\n") == "ValueError: boom"
    assert first_error_line("") is None


def test_npz_keeps_named_inputs_and_only_class_labels(tmp_path):
    one = Split({"input_ids": np.zeros((4, 3), np.int64)}, np.arange(4))
    two = Split({"input_ids": np.zeros((4, 3), np.int64), "attention_mask": np.ones((4, 3), np.int64)},
                np.zeros((4, 3), np.int64))
    with np.load(write_npz(tmp_path / "a.npz", one, labels=True)) as a:
        assert sorted(a.files) == ["x", "y"]  # one input: the documented x
    with np.load(write_npz(tmp_path / "b.npz", two, labels=True)) as b:
        assert sorted(b.files) == ["attention_mask", "input_ids"]  # per-token labels are not class labels
