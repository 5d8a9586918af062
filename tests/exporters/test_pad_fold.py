"""A zero pad feeding a conv (the TF-"same" port: ``F.pad`` with TF's widths, then ``F.conv2d``) is written as
the conv's own padding: TFLite SAME with no PAD operator. The widths TF's "same" puts there are computed here
independently (``pad_total = max((⌈n/s⌉ − 1)·s + k − n, 0)``, the smaller half first); float files are
compared with eager torch, int8 files with the simulation in LiteRT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.capture import capture  # noqa: E402
from compress.exporters.tflite import export_tflite, load_interpreter, run_tflite, verify_tflite  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


def tf_same_widths(size, kernel, stride):
    """(left, right, top, bottom) as TensorFlow's "same" pads an input of ``size`` = (H, W)."""
    widths = []
    for n, k, s in zip(size, kernel, stride, strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        widths.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = widths
    return [left, right, top, bottom]


class Conv2dSame(nn.Conv2d):
    """The usual port of TF "same" padding: a Conv2d subclass whose forward pads, then calls F.conv2d."""

    def forward(self, x):
        x = F.pad(x, tf_same_widths(x.shape[-2:], self.kernel_size, self.stride))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 1), conv

    def forward(self, x):
        return self.conv(torch.relu(self.stem(x)))


CASES = {  # name: (conv, input H × W)
    "k3s2_odd": (lambda: Conv2dSame(4, 6, 3, stride=2), (7, 9)),
    "k3s2_even": (lambda: Conv2dSame(4, 6, 3, stride=2), (8, 6)),
    "k5s2_depthwise": (lambda: Conv2dSame(4, 4, 5, stride=2, groups=4), (9, 8)),
    "k4s1": (lambda: Conv2dSame(4, 5, 4, stride=1), (6, 5)),
}


def _x(hw, seed, n=2):
    return torch.randn(n, 3, *hw, generator=torch.Generator().manual_seed(seed))


def _conv_paddings(path) -> list[int]:
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph, found = model.Subgraphs(0), []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in (tflite.BuiltinOperator.CONV_2D,
                                                                     tflite.BuiltinOperator.DEPTHWISE_CONV_2D):
            opts = tflite.Conv2DOptions()  # Padding is field 0 in both option tables
            opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            found.append(opts.Padding())
    return found


@pytest.mark.parametrize("name", sorted(CASES))
def test_tf_same_pad_becomes_the_convs_same_padding(name, tmp_path):
    import tflite

    factory, hw = CASES[name]
    torch.manual_seed(0)
    model = Net(factory()).eval()
    x = _x(hw, 1, n=1)
    info = export_tflite(capture(model, (x,)), (x,), tmp_path / "f.tflite")
    assert "PAD" not in info.op_counts, info.op_counts
    assert _conv_paddings(tmp_path / "f.tflite")[-1] == tflite.Padding.SAME
    (got,) = run_tflite(load_interpreter(tmp_path / "f.tflite"), (x.numpy(),))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    q = convert(calibrate(prepare(model, (_x(hw, 0),)), [_x(hw, s) for s in range(4)], progress=False))
    q_info = export_tflite(q, (_x(hw, 0),), tmp_path / "q.tflite")
    assert "PAD" not in q_info.op_counts and q_info.op_counts.get("DEQUANTIZE", 0) == 1, q_info.op_counts
    assert verify_tflite(tmp_path / "q.tflite", q, [_x(hw, s) for s in range(5, 8)], info=q_info).passed


class NotSame(nn.Module):
    """Pads that TFLite SAME does not reproduce, or a pad read twice: the PAD stays."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.conv, self.other = kind, nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(3, 2, 3, stride=2)

    def forward(self, x):
        if self.kind == "symmetric":  # (1, 1) on both axes with stride 2 on an odd size: SAME would pad (1, 1)
            return self.conv(F.pad(x, [1, 1, 1, 1]))  # ... but on the even axis SAME pads (0, 1)
        if self.kind == "value":
            return self.conv(F.pad(x, tf_same_widths(x.shape[-2:], (3, 3), (2, 2)), value=0.5))
        p = F.pad(x, tf_same_widths(x.shape[-2:], (3, 3), (2, 2)))
        return torch.cat([self.conv(p), self.other(p)], 1)


@pytest.mark.parametrize("kind", ["symmetric", "value", "two_readers"])
def test_other_pads_stay_and_still_match(kind, tmp_path):
    torch.manual_seed(0)
    model = NotSame(kind).eval()
    x = _x((7, 6), 2, n=1)
    info = export_tflite(capture(model, (x,)), (x,), tmp_path / "f.tflite")
    assert info.op_counts.get("PAD", 0) + info.op_counts.get("CONCATENATION", 0) >= 1, info.op_counts
    (got,) = run_tflite(load_interpreter(tmp_path / "f.tflite"), (x.numpy(),))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.onnx
@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_conv_takes_the_pad_widths_as_its_pads(name, tmp_path):
    """ONNX Conv pads are [top, left, bottom, right]: TF's widths land there (asymmetric where TF pads the extra
    row / column at the end), no Pad node; float = eager torch, int8 = the simulation in onnxruntime."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from compress.exporters.onnx import export_onnx, verify_onnx

    factory, hw = CASES[name]
    torch.manual_seed(0)
    model = Net(factory()).eval()
    left, right, top, bottom = tf_same_widths(hw, model.conv.kernel_size, model.conv.stride)
    for tag, m in (("f", model), ("q", convert(calibrate(prepare(model, (_x(hw, 0),)), [_x(hw, s) for s in range(4)],
                                                         progress=False)))):
        path = tmp_path / f"{tag}.onnx"
        info = export_onnx(m, (_x(hw, 0),), path)
        graph = onnx.load(str(path)).graph
        assert not [n for n in graph.node if n.op_type == "Pad"]
        conv = [n for n in graph.node if n.op_type == "Conv"][-1]
        pads = [list(a.ints) for a in conv.attribute if a.name == "pads"][0]
        assert pads == [top, left, bottom, right]
        report = verify_onnx(path, m, [_x(hw, s) for s in range(5, 8)], info=info)
        assert report.passed, report
