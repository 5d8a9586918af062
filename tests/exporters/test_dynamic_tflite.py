"""Weight-only mode in TFLite (int8 weights + DEQUANTIZE, float compute) run in LiteRT; dynamic refused by name.

Oracle: the float model with its weights snapped to the int8 per-channel grid in numpy, run by torch's float
ops (independent of the exporter and of the quant layers).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ExportError
from compress.passes import calibrate, convert, prepare
from compress.quant.config import QuantConfig

pytest.importorskip("ai_edge_litert")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)  # depthwise: channels on the last axis
        self.fc = nn.Linear(8 * 4 * 4, 64)  # after an NHWC flatten: permuted weight columns
        self.tok = nn.Linear(16, 5)  # on a 3-D input

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.conv(x))))
        y = torch.relu(self.fc(y.flatten(1)))
        return self.tok(y.reshape(-1, 4, 16))


def _snapped(model: nn.Module) -> nn.Module:
    """The float model with every weight on its symmetric per-output-channel int8 grid (numpy)."""
    with torch.no_grad():
        for layer in (model.conv, model.dw, model.fc, model.tok):
            w = layer.weight.numpy().astype(np.float64)
            axes = tuple(range(1, w.ndim))
            scale = (np.abs(w).max(axis=axes, keepdims=True) / 127).astype(np.float32).astype(np.float64)
            layer.weight.copy_(torch.from_numpy((np.round(w / scale) * scale).astype(np.float32)))
    return model


def _converted(mode: str, model: nn.Module, x: torch.Tensor):
    prepared = prepare(model, x[:1], QuantConfig(mode=mode))
    calibrate(prepared, [x], progress=False)
    return convert(prepared)


def test_weight_only_tflite_matches_snapped_float_model_in_litert(tmp_path):
    from compress.exporters.tflite import export_tflite
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(4, 3, 8, 8)
    int8 = _converted("weight-only", model, x)
    info = export_tflite(int8, (x[:1],), tmp_path / "wo.tflite")
    assert info.op_counts["DEQUANTIZE"] == 4 and "QUANTIZE" not in info.op_counts
    export_tflite(model, (x[:1],), tmp_path / "fp32.tflite")
    assert (tmp_path / "wo.tflite").stat().st_size < 0.4 * (tmp_path / "fp32.tflite").stat().st_size
    interpreter = load_interpreter(tmp_path / "wo.tflite", 1)
    with torch.no_grad():
        expected = _snapped(model)(x).numpy()
    for i in range(len(x)):
        got = run_tflite(interpreter, (x[i:i + 1].numpy(),))[0]
        np.testing.assert_allclose(got, expected[i:i + 1], atol=2e-5, rtol=1e-4)


def test_dynamic_layers_are_refused_by_name_for_tflite(tmp_path):
    from compress.exporters.tflite import export_tflite

    model = nn.Sequential(nn.Linear(8, 4)).eval()
    x = torch.randn(4, 8)
    int8 = _converted("dynamic", model, x)
    with pytest.raises(ExportError, match=r"layer '0' is in dynamic mode.*--format onnx"):
        export_tflite(int8, (x[:1],), tmp_path / "dyn.tflite")
    assert not (tmp_path / "dyn.tflite").exists()
