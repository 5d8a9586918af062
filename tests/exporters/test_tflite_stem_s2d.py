"""Int8 strided convs over few input channels (image stems) are written as PAD → SPACE_TO_DEPTH → a stride-1
CONV_2D (by default for kernels of ≥ 25 taps or equal to the stride: ``ops.STEM_MIN_TAPS``). The rewrite is
exact: its LiteRT output equals, code for code, that of the same model written with the strided CONV_2D
(``ops.STEM_SPACE_TO_DEPTH = False``), on uniform random int8 input codes; the file also passes op-by-op
verification against the torch simulation and stays one XNNPACK partition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import TFLiteExportConfig, export_tflite, load_interpreter, verify_tflite  # noqa: E402
from compress.exporters.tflite import ops as tfl_ops  # noqa: E402
from compress.exporters.tflite.verify import xnnpack_delegation  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class Stem(nn.Module):
    def __init__(self, conv: nn.Conv2d, pre_pad: list[int] | None = None):
        super().__init__()
        self.conv, self.pre_pad, self.head = conv, pre_pad, nn.Conv2d(conv.out_channels, 8, 1)

    def forward(self, x):
        if self.pre_pad is not None:  # the TF-"same" port: an F.pad the exporter folds into the conv
            x = F.pad(x, self.pre_pad)
        return self.head(torch.relu(self.conv(x)))


CASES = {  # name: (conv, F.pad widths before it, input H × W)
    "k7s2p3": (lambda: nn.Conv2d(3, 16, 7, stride=2, padding=3), None, (32, 32)),
    "k7s2p3_odd": (lambda: nn.Conv2d(3, 16, 7, stride=2, padding=3), None, (31, 29)),
    "k3s2p1": (lambda: nn.Conv2d(3, 16, 3, stride=2, padding=1), None, (33, 32)),
    "k4s4p0": (lambda: nn.Conv2d(3, 16, 4, stride=4), None, (32, 28)),
    "k3s2_one_channel_no_bias": (lambda: nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False), None, (16, 16)),
    "k3s2_tf_same": (lambda: nn.Conv2d(3, 16, 3, stride=2), [0, 1, 0, 1], (32, 32)),
}


def _model(name):
    factory, pre_pad, hw = CASES[name]
    torch.manual_seed(0)
    m = Stem(factory(), pre_pad).eval()
    c = m.conv.in_channels
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, c, *hw, generator=g) for _ in range(4)]
    return convert(calibrate(prepare(m, (batches[0],)), batches, progress=False)), batches


def _export(q, x, path, rewrite: bool, monkeypatch):
    monkeypatch.setattr(tfl_ops, "STEM_SPACE_TO_DEPTH", rewrite)
    return export_tflite(q, (x,), path, TFLiteExportConfig(int8_io=True))


def _run(path, codes):
    it = load_interpreter(path)
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], codes)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_space_to_depth_stem_is_bit_identical_to_the_strided_conv(name, tmp_path, monkeypatch):
    monkeypatch.setattr(tfl_ops, "STEM_MIN_TAPS", 0)  # exactness does not depend on the speed rule: 3×3 too
    q, batches = _model(name)
    new = _export(q, batches[0], tmp_path / "s2d.tflite", True, monkeypatch)
    old = _export(q, batches[0], tmp_path / "strided.tflite", False, monkeypatch)
    assert new.op_counts.get("SPACE_TO_DEPTH") == 1, new.op_counts
    assert "SPACE_TO_DEPTH" not in old.op_counts and old.op_counts["CONV_2D"] == new.op_counts["CONV_2D"] == 2
    # int8 io: the input is the conv's own int8 codes; uniform codes reach every value, including the extremes
    g = np.random.default_rng(2)
    for seed in range(3):
        codes = g.integers(-128, 128, size=(2, *batches[0].shape[1:]), dtype=np.int8)
        got, want = _run(tmp_path / "s2d.tflite", codes), _run(tmp_path / "strided.tflite", codes)
        assert got.dtype == np.int8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{name} seed {seed}")
    d = xnnpack_delegation(tmp_path / "s2d.tflite")
    assert d["fallback"] == [] and d["partitions"] == 1, d


@pytest.mark.parametrize("name", ["k7s2p3", "k3s2_tf_same"])
def test_space_to_depth_stem_passes_layerwise_verification(name, tmp_path, monkeypatch):
    q, batches = _model(name)
    monkeypatch.setattr(tfl_ops, "STEM_SPACE_TO_DEPTH", True)
    monkeypatch.setattr(tfl_ops, "STEM_MIN_TAPS", 0)
    info = export_tflite(q, (batches[0],), tmp_path / "q.tflite")
    assert info.op_counts.get("SPACE_TO_DEPTH") == 1, info.op_counts
    report = verify_tflite(tmp_path / "q.tflite", q, batches[:2], info=info)
    assert report.passed, report


@pytest.mark.parametrize("conv, hw", [
    (lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1), (16, 16)),  # too many input channels
    (lambda: nn.Conv2d(3, 16, 3, stride=1, padding=1), (16, 16)),  # stride 1
    (lambda: nn.Conv2d(3, 16, 3, stride=2, padding=1), (16, 16)),  # 9 taps: measured slower rewritten
    (lambda: nn.Conv2d(3, 16, 4, stride=4), (34, 32)),  # never reads the last 2 rows: would need a crop
], ids=["cin8", "stride1", "k3s2", "unread_rows"])
def test_other_convs_stay_strided(conv, hw, tmp_path, monkeypatch):
    torch.manual_seed(0)
    m = Stem(conv()).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(1, m.conv.in_channels, *hw, generator=g) for _ in range(3)]
    q = convert(calibrate(prepare(m, (batches[0],)), batches, progress=False))
    info = _export(q, batches[0], tmp_path / "q.tflite", True, monkeypatch)
    assert "SPACE_TO_DEPTH" not in info.op_counts, info.op_counts


@pytest.mark.parametrize("name", ["k7s2p3", "k4s4p0"])
def test_default_rule_rewrites_large_and_patchify_stems(name, tmp_path, monkeypatch):
    q, batches = _model(name)
    info = _export(q, batches[0], tmp_path / "q.tflite", True, monkeypatch)
    assert info.op_counts.get("SPACE_TO_DEPTH") == 1, info.op_counts
