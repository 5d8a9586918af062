"""Coverage of a captured graph is checked per requested format before calibration starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ExportError
from compress.io import Dataset
from compress.ops.coverage import check_coverage, coverage_gaps


class BesselNet(nn.Module):
    """An op compress has no torch-level form for: capture keeps it as a generic aten node."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.special.bessel_j0(self.fc(x))


def test_unmapped_op_is_named_with_the_users_source_line():
    from compress.capture import capture

    gm = capture(BesselNet(), (torch.randn(2, 4),))
    gaps = coverage_gaps(gm, ("onnx", "tflite"))
    assert [(g.fmt, g.label) for g in gaps] == [("tflite", "aten.special_bessel_j0")]
    assert gaps[0].source.startswith("test_coverage.py:") and "bessel_j0" in gaps[0].source
    with pytest.raises(ExportError, match=r"aten.special_bessel_j0 at test_coverage.py:\d+ .* no tflite mapping; "
                                          r"use --format onnx"):
        check_coverage(gm, ("onnx", "tflite"))
    check_coverage(gm, ("onnx",))  # ONNX carries it as a float subgraph


def test_quantize_refuses_before_calibrating(monkeypatch, tmp_path):
    import compress.pipeline as pipeline
    from compress.pipeline import Format, QuantizeOptions

    calls = []
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: calls.append(1))
    data = Dataset(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), None, "random")
    with pytest.raises(ExportError, match="no tflite mapping"):
        pipeline.quantize_model(BesselNet(), data, tmp_path / "out", QuantizeOptions(formats=(Format.TFLITE,)),
                                progress=False)
    assert calls == []
