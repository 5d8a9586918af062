"""``torch.cat`` with a constant operand (a learned table read directly, as token / position tables are) in
TFLite: the constant is written as a constant tensor (int8 on the grid prepare gives it, else float), checked
against eager torch (float) and the simulation (int8, op by op) in LiteRT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from compress.capture import capture  # noqa: E402
from compress.exporters.tflite import export_tflite, verify_tflite  # noqa: E402
from compress.exporters.tflite.verify import load_interpreter, run_tflite  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class CatTable(nn.Module):
    """Conv features concatenated with a learned [1, C, H, W] table (batch 1, as a token table is used)."""

    def __init__(self, extra: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.table = nn.Parameter(torch.randn(1, extra, 6, 6))
        self.head = nn.Conv2d(8 + extra, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([torch.relu(self.conv(x)), self.table], dim=1))


@pytest.mark.parametrize("extra", [2, 16])  # 72 elements: float table; 576: int8 table (≥ 256 elements)
def test_cat_with_a_constant_exports_float_and_int8(extra, tmp_path):
    torch.manual_seed(0)
    model = CatTable(extra).eval()
    x = (torch.randn(1, 3, 6, 6),)
    info = export_tflite(capture(model, x), x, tmp_path / "f.tflite")
    assert "CONCATENATION" in info.op_counts
    got = run_tflite(load_interpreter(tmp_path / "f.tflite"), (x[0].numpy(),))[0]
    with torch.no_grad():
        want = model(*x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))

    q = convert(calibrate(prepare(model, x), [torch.randn(1, 3, 6, 6) for _ in range(8)], progress=False))
    info = export_tflite(q, x, tmp_path / "q.tflite")
    assert info.op_counts.get("CONV_2D") == 2  # both convs int8 around the concatenation
    report = verify_tflite(tmp_path / "q.tflite", q, [torch.randn(1, 3, 6, 6).numpy() for _ in range(4)],
                           info=info)
    assert report.passed, report.summary()
