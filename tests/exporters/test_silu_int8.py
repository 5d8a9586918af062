"""SiLU is int8 in both files (issue 7: it ran in float between DequantizeLinear and QuantizeLinear, 45 % of the
zoo EfficientNet-Lite's int8 kernel time). ``prepare`` lowers it to ``x · sigmoid(x)`` with the sigmoid on the
fixed 1/256 grid, and the runtimes fuse the QDQ pattern into their int8 kernels: checked in onnxruntime's own
optimized graph (QLinearSigmoid, QLinearMul) and in the TFLite file's tensor types (int8 LOGISTIC and MUL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress import ops
from compress.ops import Kernel
from compress.passes import calibrate, convert, prepare


class SiLUNet(nn.Module):
    """conv → SiLU → depthwise conv → SiLU → squeeze-excite gate (sigmoid · mul) → conv, as MBConv writes it."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.act1 = nn.SiLU(inplace=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.act1(self.pw(x))
        y = torch.nn.functional.silu(self.dw(y))
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        return self.out(y)


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 6, 6, generator=g) * 2 for _ in range(n)]


@pytest.fixture(scope="module")
def qmodel():
    torch.manual_seed(0)
    model = SiLUNet().eval()
    q = convert(calibrate(prepare(model, _batches(1)[0][:1]), _batches(4), progress=False))
    return model, q


def test_prepare_quantizes_the_sigmoid_on_its_fixed_grid_and_reports_nothing_float(qmodel):
    _, q = qmodel
    assert q.compress_info.float_ops == []
    modules = dict(q.named_modules())
    assert not [n for n in q.graph.nodes if ops.lookup(n, modules) is ops.get("silu")]
    gates = [n for n in q.graph.nodes if n.target is torch.sigmoid]
    assert len(gates) == 3  # two lowered SiLUs and the squeeze-excite gate
    for gate in gates:
        (user,) = gate.users
        quantizer = modules[user.target]
        # TFLite's int8 LOGISTIC output grid: scale 1/256 over [0, 1), whatever the calibration saw.
        assert float(quantizer.scale) == pytest.approx(1 / 256, rel=1e-6)
        assert int(quantizer.zero_point.reshape(())) == quantizer.spec.qmin  # real 0 is the lowest code
    assert ops.get("silu").kernel("onnx") is Kernel.INT8 and ops.get("silu").kernel("tflite") is Kernel.INT8


def test_int8_matches_float_silu(qmodel):
    """The lowered simulation still computes SiLU: within a few output steps of eager float torch."""
    model, q = qmodel
    x = _batches(1, seed=7)[0]
    with torch.no_grad():
        want, got = model(x).numpy(), q(x).numpy()
    span = float(want.max() - want.min())
    assert np.abs(got - want).max() <= 0.05 * span


@pytest.mark.onnx
def test_onnx_runs_silu_as_qlinear_sigmoid_and_mul(qmodel, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from compress.exporters import export_onnx
    from compress.exporters.onnx import verify_onnx

    model, q = qmodel
    path = tmp_path / "q.onnx"
    info = export_onnx(q, (_batches(1)[0][:1],), path)
    assert info.float_fallbacks == []
    report = verify_onnx(path, q, [b.numpy() for b in _batches(2, seed=3)], info=info, graph=q)
    assert report.passed and report.within_1lsb_fraction >= 0.99, report.summary()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert kinds.count("QLinearSigmoid") == 3 and kinds.count("QLinearMul") == 3, kinds
    assert "Sigmoid" not in kinds and "Mul" not in kinds, kinds  # nothing left in float
    # Against eager float torch (an independent reference), the int8 file stays close.
    x = _batches(1, seed=9)[0]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 0.05 * float(want.max() - want.min())


@pytest.mark.tflite
def test_tflite_runs_silu_as_int8_logistic_and_mul(qmodel, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from compress.exporters.tflite import export_tflite, verify_tflite, xnnpack_delegation
    from compress.exporters.tflite.verify import load_interpreter

    _, q = qmodel
    path = tmp_path / "q.tflite"
    info = export_tflite(q, _batches(1)[0][:1], path)
    assert info.op_counts.get("LOGISTIC") == 3 and info.op_counts.get("MUL") == 3, info.op_counts
    assert "DEQUANTIZE" not in info.op_counts or info.op_counts["DEQUANTIZE"] == 1, info.op_counts  # output only
    interp = load_interpreter(path)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    for op in interp._get_ops_details():
        if op["op_name"] in ("LOGISTIC", "MUL"):
            assert all(details[i]["dtype"] == np.int8 for i in list(op["inputs"]) + list(op["outputs"])), op
    report = verify_tflite(path, q, [b[:1] for b in _batches(3, seed=5)], info=info, graph=q)
    assert report.passed, report
    assert xnnpack_delegation(path)["partitions"] == 1
