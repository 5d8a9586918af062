"""Ops with no ONNX emitter are written in float by torch.onnx and spliced in; checked in onnxruntime.

ConvTranspose2d, Upsample and cumsum used to take this path; they have emitters now (issue 7) and the tests
below check that they stay float where they should and no longer fall back.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ExportError
from compress.exporters import OnnxExportConfig, export_onnx
from compress.exporters.onnx import verify_onnx
from compress.passes import calibrate, convert, prepare

pytestmark = pytest.mark.onnx


class UpNet(nn.Module):
    """conv → relu → ConvTranspose2d (float weights: no quantized transposed conv) → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(2 * 16 * 16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.up(self.relu(self.conv(x))), 1))


class Mixed(nn.Module):
    """Upsample (module) and torch.cumsum (function): both have emitters now."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        return torch.cumsum(self.upsample(self.conv(x)), dim=3) + 1.0


def run(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def upnet():
    torch.manual_seed(0)
    return UpNet().eval()


def test_conv_transpose_fp32_runs_in_float_at_any_batch(upnet, tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # anything torch.onnx writes on the side lands here
    out = tmp_path / "out"
    out.mkdir()
    info = export_onnx(upnet, (torch.randn(1, 1, 8, 8),), out / "fp32.onnx")
    assert info.float_fallbacks == []  # its own emitter, no torch.onnx
    assert info.op_histogram["ConvTranspose"] == 1
    for batch in (1, 3):
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        assert rel_err(run(out / "fp32.onnx", x), upnet(x).detach().numpy()) <= 1e-4
    # torch.export creates its (empty) inductor cache folder in the temp dir once: that is torch's, not ours.
    assert os.listdir(out) == ["fp32.onnx"] and [p for p in os.listdir(tmp) if "torchinductor" not in p] == []


@pytest.mark.parametrize("opset", [13, 17])
def test_conv_transpose_int8_within_1lsb_of_simulation(upnet, opset, tmp_path):
    import onnx

    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 8, 8, generator=g)]
    qmodel = convert(calibrate(prepare(upnet, calib[0][:1]), calib, progress=False))
    path = tmp_path / "int8.onnx"
    info = export_onnx(qmodel, (torch.randn(1, 1, 8, 8),), path, OnnxExportConfig(opset=opset))
    assert info.float_fallbacks == []
    assert [(o.domain, o.version) for o in onnx.load(str(path)).opset_import] == [("", opset)]
    # The float op's input is dequantized and its output re-quantized: the graph is still int8 around it.
    assert info.op_histogram["QuantizeLinear"] >= 2 and info.output_scales[0] is not None
    inputs = [torch.randn(b, 1, 8, 8, generator=g).numpy() for b in (1, 3, 32)]
    report = verify_onnx(path, qmodel, inputs, info=info)
    assert report.passed and report.within_1lsb_fraction >= 0.99, report.summary()
    # QuantConvTranspose2d: the file stores its weights as int8 codes behind DequantizeLinear (4x smaller);
    # onnxruntime has no int8 ConvTranspose kernel, so it computes in float on exactly those weights.
    import onnxruntime as ort

    saved = onnx.load(str(path)).graph
    producers = {o: n for n in saved.node for o in n.output}
    (deconv,) = [n for n in saved.node if n.op_type == "ConvTranspose"]
    dq = producers[deconv.input[1]]
    int8_inits = {i.name for i in saved.initializer if i.data_type == onnx.TensorProto.INT8}
    assert dq.op_type == "DequantizeLinear" and dq.input[0] in int8_inits
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "ConvTranspose" in optimized  # float compute (reported in float_ops), not silently requantized


def test_upsample_and_cumsum_are_native_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = Mixed().eval()
    path = tmp_path / "m.onnx"
    info = export_onnx(model, (torch.randn(1, 2, 5, 5),), path)
    assert info.float_fallbacks == [] and info.op_histogram["Resize"] == 1 and info.op_histogram["CumSum"] == 1
    for batch in (1, 3):
        x = torch.randn(batch, 2, 5, 5)
        assert rel_err(run(path, x), model(x).detach().numpy()) <= 1e-4
    assert os.listdir(tmp_path) == ["m.onnx"]


class _Flips(nn.Module):
    def forward(self, x):
        return x.flip(1).relu()  # Tensor.flip: a method without a handler


def test_method_falls_back_with_fixed_batch(tmp_path):
    info = export_onnx(_Flips(), (torch.randn(2, 6),), tmp_path / "m.onnx", OnnxExportConfig(dynamic_batch=False))
    assert info.float_fallbacks == ["flip (aten.flip)"]  # a float model is captured by torch.export
    x = torch.randn(2, 6)
    np.testing.assert_array_equal(run(tmp_path / "m.onnx", x), x.flip(1).relu().numpy())


def test_method_falls_back_with_dynamic_batch(tmp_path):
    info = export_onnx(_Flips(), (torch.randn(1, 6),), tmp_path / "m.onnx")
    assert info.float_fallbacks == ["flip (aten.flip)"]
    for batch in (1, 4):
        x = torch.randn(batch, 6)
        np.testing.assert_array_equal(run(tmp_path / "m.onnx", x), x.flip(1).relu().numpy())


class _Scale(nn.Module):
    """A user's leaf module (no registry op): torch.onnx writes it, weights and all."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 1, 1))

    def forward(self, x):
        return x * self.w + x.flip(1)


def test_fallback_names_do_not_clash_when_an_op_repeats(tmp_path):
    """Two leaf modules of the same shape: their initializers must stay distinct after the splice."""
    from torch import fx

    from compress.exporters.onnx.export import ExportTracer

    class Tracer(ExportTracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, _Scale) or super().is_leaf_module(m, name)

    torch.manual_seed(0)
    model = nn.Sequential(_Scale(), _Scale()).eval()
    gm = fx.GraphModule(model, Tracer().trace(model))
    info = export_onnx(gm, (torch.randn(2, 2, 3, 3),), tmp_path / "m.onnx")
    assert info.float_fallbacks == ["_0 (_Scale)", "_1 (_Scale)"]
    x = torch.randn(4, 2, 3, 3)
    assert rel_err(run(tmp_path / "m.onnx", x), model(x).detach().numpy()) <= 1e-4


class _Opaque(nn.Module):
    def forward(self, x):
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))  # numpy: no exporter can trace it


class _HasOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.opaque = _Opaque()

    def forward(self, x):
        return self.opaque(x) + 1


def test_impossible_op_is_one_short_line(tmp_path):
    from compress.exporters.onnx.export import ExportTracer

    class Tracer(ExportTracer):
        def is_leaf_module(self, m, name):
            return isinstance(m, _Opaque) or super().is_leaf_module(m, name)

    from torch import fx

    gm = fx.GraphModule(_HasOpaque(), Tracer().trace(_HasOpaque()))
    with pytest.raises(ExportError) as err:
        export_onnx(gm, (torch.randn(2, 3),), tmp_path / "m.onnx")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 900, msg
    assert "_Opaque at fx node 'opaque'" in msg and "compress inspect MODEL" in msg
    assert "nn.Conv2d" not in msg  # the supported-op list is a count, not ~150 names
    assert os.listdir(tmp_path) == []


class _Sorts(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values  # a named tuple's field: getattr selects the output, no op


def test_named_tuple_op_falls_back_and_its_field_is_selected(tmp_path):
    info = export_onnx(_Sorts(), (torch.randn(2, 7),), tmp_path / "m.onnx")
    assert info.float_fallbacks == ["sort (aten.sort)"]
    x = torch.randn(5, 7)
    np.testing.assert_array_equal(run(tmp_path / "m.onnx", x), np.sort(x.numpy(), axis=-1))
