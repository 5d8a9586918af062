"""The flatbuffer writer: structure read back with the tflite schema package, and run in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

import tflite  # noqa: E402

from compress.exporters.tflite import TFLiteExportConfig, export_tflite, read_file_identifier  # noqa: E402
from compress.exporters.tflite.schema import ModelWriter, Options, QuantParams, TensorType  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


def _run(buf: bytes, *xs):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=buf)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs, strict=True):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def test_hand_built_add_relu_runs_and_has_tfl3_layout():
    w = ModelWriter()
    x = w.add_tensor("x", (1, 4), TensorType.FLOAT32)
    c = w.add_tensor("c", (1, 4), TensorType.FLOAT32, data=np.array([[1, -2, 3, -4]], np.float32))
    y = w.add_tensor("y", (1, 4), TensorType.FLOAT32)
    w.add_operator("ADD", [x, c], [y], Options("AddOptions", {"FusedActivationFunction": 1}))
    buf = w.serialize([x], [y])
    (out,) = _run(buf, np.array([[0.5, 0.5, -5.0, 10.0]], np.float32))
    np.testing.assert_array_equal(out, [[1.5, 0.0, 0.0, 6.0]])  # relu(x + c), by hand
    assert buf[4:8] == b"TFL3"
    m = tflite.Model.GetRootAs(buf, 0)
    assert m.Version() == 3
    assert m.Buffers(0).DataLength() == 0  # the empty sentinel
    assert m.Buffers(1).DataLength() == 16
    assert m.Subgraphs(0).Tensors(0).Buffer() == 0


def test_operator_codes_carry_both_builtin_fields():
    w = ModelWriter()
    x = w.add_tensor("x", (1, 4), TensorType.FLOAT32)
    y = w.add_tensor("y", (1, 4), TensorType.FLOAT32)
    z = w.add_tensor("z", (1, 4), TensorType.FLOAT32)
    w.add_operator("GELU", [x], [y], Options("GeluOptions", {"Approximate": False}))
    w.add_operator("RELU", [y], [z])
    m = tflite.Model.GetRootAs(w.serialize([x], [z]), 0)
    codes = {m.OperatorCodes(i).BuiltinCode(): m.OperatorCodes(i).DeprecatedBuiltinCode() for i in range(2)}
    # GELU (150) does not fit the old int8 field: 127 = PLACEHOLDER_FOR_GREATER_OP_CODES there.
    assert codes == {tflite.BuiltinOperator.GELU: 127, tflite.BuiltinOperator.RELU: tflite.BuiltinOperator.RELU}


def test_opcode_version_is_the_highest_needed():
    w = ModelWriter()
    x = w.add_tensor("x", (1, 4), TensorType.FLOAT32)
    y = w.add_tensor("y", (1, 4), TensorType.FLOAT32)
    z = w.add_tensor("z", (1, 4), TensorType.FLOAT32)
    w.add_operator("RELU", [x], [y], version=1)
    w.add_operator("RELU", [y], [z], version=2)
    m = tflite.Model.GetRootAs(w.serialize([x], [z]), 0)
    assert m.OperatorCodesLength() == 1 and m.OperatorCodes(0).Version() == 2


def test_per_channel_params_round_trip():
    w = ModelWriter()
    q = QuantParams.per_channel([0.5, 0.25, 0.125], 0, axis=3)
    t = w.add_tensor("w", (1, 1, 1, 3), TensorType.INT8, data=np.array([1, 2, 3], np.int8).reshape(1, 1, 1, 3),
                     quant=q)
    m = tflite.Model.GetRootAs(w.serialize([t], [t]), 0)
    qp = m.Subgraphs(0).Tensors(0).Quantization()
    assert qp.QuantizedDimension() == 3
    np.testing.assert_array_equal(qp.ScaleAsNumpy(), np.float32([0.5, 0.25, 0.125]))
    np.testing.assert_array_equal(qp.ZeroPointAsNumpy(), [0, 0, 0])


def test_weights_are_16_byte_aligned_small_constants_8(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7)).eval()
    path = tmp_path / "m.tflite"
    export_tflite(m, torch.randn(1, 3, 6, 6), path)
    buf = path.read_bytes()
    model = tflite.Model.GetRootAs(buf, 0)
    for i in range(1, model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength():
            # The vector's payload offset inside the file.
            off = b._tab.Vector(b._tab.Offset(4))
            assert off % (16 if b.DataLength() >= 64 else 8) == 0, b.DataLength()


def _convert(model, x):
    return convert(calibrate(prepare(model, x), [x, torch.randn_like(x)], progress=False))


def test_int8_file_versions_and_quantized_dimensions(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                      nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 4, 6, 6)
    q = _convert(m, x)
    path = tmp_path / "q.tflite"
    export_tflite(q, x, path)
    assert read_file_identifier(path) == b"TFL3"
    model = tflite.Model.GetRootAs(path.read_bytes(), 0)
    ops = {model.OperatorCodes(i).BuiltinCode(): model.OperatorCodes(i).Version()
           for i in range(model.OperatorCodesLength())}
    B = tflite.BuiltinOperator
    # What TF's converter writes for int8 operands (tensorflow/lite/tools/versioning/op_version.cc).
    assert ops[B.CONV_2D] == 3 and ops[B.DEPTHWISE_CONV_2D] == 3 and ops[B.FULLY_CONNECTED] == 4
    assert ops[B.MEAN] == 2 and ops[B.QUANTIZE] == 1 and ops[B.DEQUANTIZE] == 2
    sg = model.Subgraphs(0)
    dims = {}
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        if code in (B.CONV_2D, B.DEPTHWISE_CONV_2D, B.FULLY_CONNECTED):
            wt, bt = sg.Tensors(op.Inputs(1)), sg.Tensors(op.Inputs(2))
            assert wt.Type() == tflite.TensorType.INT8 and bt.Type() == tflite.TensorType.INT32
            assert wt.Quantization().ScaleLength() == (3 if code == B.FULLY_CONNECTED else 8)
            in_scale = sg.Tensors(op.Inputs(0)).Quantization().Scale(0)
            np.testing.assert_allclose(bt.Quantization().ScaleAsNumpy(),
                                       in_scale * wt.Quantization().ScaleAsNumpy(), rtol=1e-6)
            dims[code] = (wt.Quantization().QuantizedDimension(), wt.ShapeAsNumpy().tolist())
    assert dims[B.CONV_2D] == (0, [8, 3, 3, 4])            # OHWI, per output channel
    assert dims[B.DEPTHWISE_CONV_2D] == (3, [1, 3, 3, 8])  # 1HWO, channel is the last axis
    assert dims[B.FULLY_CONNECTED] == (0, [3, 8])


def test_int8_io_has_int8_edges(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU()).eval()
    x = torch.randn(1, 2, 5, 5)
    q = _convert(m, x)
    info = export_tflite(q, x, tmp_path / "a.tflite", TFLiteExportConfig(int8_io=True))
    assert info.inputs[0]["dtype"] == "int8" and info.outputs[0]["dtype"] == "int8"
    assert "QUANTIZE" not in info.op_counts and "DEQUANTIZE" not in info.op_counts
    info = export_tflite(q, x, tmp_path / "b.tflite")
    assert info.inputs[0]["dtype"] == "float32" and info.op_counts["QUANTIZE"] == 1


def _vector_position(table, field: int) -> int:
    """Where a flatbuffer table's vector field starts in the file (two tables referencing one vector agree)."""
    return table._tab.Vector(table._tab.Offset(field))


def test_equal_vectors_and_tables_are_written_once_and_still_run():
    """Two int8 FCs with 6 output channels each: one zero-point vector (int64 × 6) and one shape vector serve
    both weights and both biases; the scale vectors differ and stay separate. The file runs in LiteRT and
    equals the integer products computed here."""
    rng = np.random.default_rng(0)
    w = ModelWriter()
    x = w.add_tensor("x", (1, 6), TensorType.INT8, quant=QuantParams.per_tensor(0.1, 0))
    h = w.add_tensor("h", (1, 6), TensorType.INT8, quant=QuantParams.per_tensor(0.2, 0))
    y = w.add_tensor("y", (1, 6), TensorType.INT8, quant=QuantParams.per_tensor(0.4, 0))
    codes = [rng.integers(-5, 6, (6, 6)).astype(np.int8) for _ in range(2)]
    s_w = [np.full(6, 0.05), np.full(6, 0.03)]
    ins = [(x, 0.1), (h, 0.2)]
    fc = Options("FullyConnectedOptions", {"FusedActivationFunction": 0, "KeepNumDims": False})
    for (src, s_in), dst, c, s in zip(ins, (h, y), codes, s_w, strict=True):
        wt = w.add_tensor("w", c.shape, TensorType.INT8, data=c, quant=QuantParams.per_channel(s, 0, 0))
        bt = w.add_tensor("b", (6,), TensorType.INT32, data=np.zeros(6, np.int32),
                          quant=QuantParams.per_channel(s * s_in, 0, 0))
        w.add_operator("FULLY_CONNECTED", [src, wt, bt], [dst], fc, 4)
    buf = w.serialize([x], [y])
    graph = tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    consts = [graph.Tensors(i) for i in range(graph.TensorsLength())
              if graph.Tensors(i).Quantization().ScaleLength() == 6]
    assert len(consts) == 4
    assert len({_vector_position(t.Quantization(), 10) for t in consts}) == 1  # zero_point, field 3
    assert len({_vector_position(t.Quantization(), 8) for t in consts}) == 4  # scale, field 2: all different
    assert len({_vector_position(graph.Tensors(i), 4) for i in range(3)}) == 1  # the (1, 6) shapes
    xq = rng.integers(-20, 21, (1, 6)).astype(np.int8)
    (out,) = _run(buf, xq)
    hq = np.clip(np.round(xq.astype(np.int64) @ codes[0].T.astype(np.int64) * 0.1 * 0.05 / 0.2), -128, 127)
    want = np.clip(np.round(hq @ codes[1].T.astype(np.int64) * 0.2 * 0.03 / 0.4), -128, 127)
    assert np.abs(out.astype(np.int64) - want).max() <= 1


def _tensor_names(buf: bytes) -> list[str]:
    graph = tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    return [(graph.Tensors(i).Name() or b"").decode() for i in range(graph.TensorsLength())]


def test_keep_name_writes_only_the_names_it_accepts_and_the_signatures():
    w = ModelWriter(keep_name=lambda s: s == "probe")
    x = w.add_tensor("input_ids_long_name", (1, 4), TensorType.FLOAT32)
    c = w.add_tensor("probe", (1, 4), TensorType.FLOAT32, data=np.ones((1, 4), np.float32))  # a constant: dropped
    p = w.add_tensor("probe_", (1, 4), TensorType.FLOAT32)
    q = w.add_tensor("a_decomposition_step", (1, 4), TensorType.FLOAT32)
    y = w.add_tensor("output", (1, 4), TensorType.FLOAT32)
    w.add_operator("ADD", [x, c], [p], Options("AddOptions"))
    w.add_operator("RELU", [p], [q])
    w.add_operator("RELU", [q], [y])
    renamed = ModelWriter(keep_name=lambda s: s == "probe_")
    renamed.__dict__.update({k: v for k, v in w.__dict__.items() if k != "keep_name"})
    assert _tensor_names(w.serialize([x], [y])) == ["input_ids_long_name", "", "", "", "output"]
    buf = renamed.serialize([x], [y])
    assert _tensor_names(buf) == ["input_ids_long_name", "", "probe_", "", "output"]
    (out,) = _run(buf, np.array([[-3, 0.5, 1, -0.5]], np.float32))
    np.testing.assert_array_equal(out, [[0, 1.5, 2, 0.5]])


def test_a_repeated_operator_is_written_once_and_its_readers_use_the_first():
    """Two identical DEQUANTIZEs of one int8 table (a decoder step's embedding, unrolled) and a RELU of each:
    one DEQUANTIZE is written, the second RELU reads its output, the unused tensor is not written; the output
    equals the file written without the repeat. A repeat whose output keeps its name is written."""
    def build(repeat: bool, keep=lambda s: False):
        w = ModelWriter(keep_name=keep)
        codes = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
        table = w.add_tensor("t", (3, 4), TensorType.INT8, data=codes, quant=QuantParams.per_tensor(0.5, 1))
        x = w.add_tensor("x", (3, 4), TensorType.FLOAT32)
        outs = []
        for k in range(2):
            f = w.add_tensor(f"f{k}", (3, 4), TensorType.FLOAT32)
            assert w.add_operator("DEQUANTIZE", [table], [f], version=2) == (k == 0 or not repeat or keep(f"f{k}"))
            if not repeat:
                break
            outs.append(f)
        f = outs[-1] if repeat else f
        s = w.add_tensor("s", (3, 4), TensorType.FLOAT32)
        w.add_operator("ADD", [x, outs[0] if repeat else f], [s], Options("AddOptions"))
        y = w.add_tensor("y", (3, 4), TensorType.FLOAT32)
        w.add_operator("MUL", [s, f], [y], Options("MulOptions"))
        return w, w.serialize([x], [y])

    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    w, buf = build(True)
    _, plain = build(False)
    graph = tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    assert graph.OperatorsLength() == 3 and graph.TensorsLength() == 5  # table, x, f0, s, y
    assert w.resolve(3) == 2
    np.testing.assert_array_equal(_run(buf, x)[0], _run(plain, x)[0])
    table = (np.arange(-6, 6).reshape(3, 4) - 1) * 0.5
    np.testing.assert_allclose(_run(buf, x)[0], (x + table) * table, rtol=1e-6)
    _, named = build(True, keep=lambda s: s == "f1")
    assert tflite.Model.GetRootAsModel(named, 0).Subgraphs(0).OperatorsLength() == 4
