"""A stride-1 int8 conv reading few channels (an image stem) is written as im2col + a 1 × 1 conv
(``ops_quant.narrow_conv_input``): strided Slices of the uint8 codes, one per kernel tap, concatenated on the
channel axis. The rewrite must be exact: onnxruntime's outputs equal, bit for bit, those of the file written
with the rewrite switched off (the plain QDQ conv), the int8 kernels still run (QLinearConv in onnxruntime's
optimized graph), and the file stays within the simulation's tolerance (verify_onnx).

Likewise a conv's kernel taps that read only padding at every output position are cropped
(``ops_quant.crop_padding_taps``), bit-identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.onnx

from compress.exporters import ActivationDType, OnnxExportConfig, export_onnx  # noqa: E402
from compress.exporters.onnx import ops_quant, verify_onnx  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402


class Stem(nn.Module):
    """A stem conv (``cin`` channels, ``kernel``, ``padding``), ReLU, a second conv, a linear head."""

    def __init__(self, cin: int, kernel, padding, shared: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 8, kernel, padding=padding)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.side = nn.Conv2d(cin, 6, 1) if shared else None  # a second reader of the quantized input
        self.fc = nn.LazyLinear(5)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        if self.side is not None:
            y = y + self.side(x)[..., : y.shape[-2], : y.shape[-1]]
        return self.fc(torch.relu(y).flatten(1))


CASES = {  # name: (cin, kernel, padding, shared input, input H × W)
    "mnist_3x3": (1, 3, 0, False, (12, 10)),
    "rgb_3x3_pad1": (3, 3, 1, False, (9, 9)),
    "two_ch_3x2_pad": (2, (3, 2), (1, 0), False, (8, 7)),
    "input_read_twice": (1, 3, 0, True, (9, 9)),
}


def _x(hw, cin, seed, n):
    return torch.randn(n, cin, *hw, generator=torch.Generator().manual_seed(seed))


def _session(path, optimized=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_narrow_stem_is_im2col_and_bit_identical(name, tmp_path, monkeypatch):
    import onnx

    cin, kernel, padding, shared, hw = CASES[name]
    torch.manual_seed(0)
    model = Stem(cin, kernel, padding, shared).eval()
    model(_x(hw, cin, 0, 1))  # materialise the lazy head
    q = convert(calibrate(prepare(model, (_x(hw, cin, 0, 1),)), [_x(hw, cin, s, 8) for s in range(3)],
                          progress=False))
    config = OnnxExportConfig(activation_dtype=ActivationDType.UINT8)
    info = export_onnx(q, (_x(hw, cin, 0, 1),), tmp_path / "new.onnx", config)
    with monkeypatch.context() as m:
        m.setattr(ops_quant, "NARROW_CHANNELS", 0)  # the rewrite off: the plain QDQ conv
        export_onnx(q, (_x(hw, cin, 0, 1),), tmp_path / "plain.onnx", config)

    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    new, plain = (onnx.load(str(tmp_path / f"{t}.onnx")).graph for t in ("new", "plain"))
    stem = [n for n in new.node if n.op_type == "Conv"][0]
    attrs = {a.name: list(a.ints) for a in stem.attribute}
    assert attrs["kernel_shape"] == [1, 1] and attrs["pads"] == [0, 0, 0, 0]
    dq = _producer(new, stem.input[0])
    cat = _producer(new, dq.input[0])
    assert dq.op_type == "DequantizeLinear" and cat.op_type == "Concat"
    assert [_producer(new, t).op_type for t in cat.input] == ["Slice"] * (kh * kw)
    weight = next(i for i in new.initializer if i.name == _producer(new, stem.input[1]).input[0])
    assert list(weight.dims) == [8, cin * kh * kw, 1, 1]
    plain_stem = [n for n in plain.node if n.op_type == "Conv"][0]
    assert {a.name: list(a.ints) for a in plain_stem.attribute}["kernel_shape"] == [kh, kw]
    # No node is left without a reader: every output is a graph output or some node's input.
    read = {t for n in new.node for t in n.input} | {o.name for o in new.output}
    assert all(o in read for n in new.node for o in n.output)

    # Bit-identical to the plain file in onnxruntime, at a batch other than the example's.
    sessions = [_session(tmp_path / f"{t}.onnx", tmp_path / f"{t}.opt.onnx") for t in ("new", "plain")]
    for seed in (5, 6):
        x = _x(hw, cin, seed, 5).numpy()
        got, want = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in sessions)
        assert np.array_equal(got, want), np.abs(got - want).max()
    # Every conv still runs an int8 kernel in onnxruntime.
    for t in ("new", "plain"):
        ops = [n.op_type for n in onnx.load(str(tmp_path / f"{t}.opt.onnx")).graph.node]
        assert ops.count("QLinearConv") == (3 if shared else 2) and "Conv" not in ops, (t, ops)
    assert verify_onnx(tmp_path / "new.onnx", q, [_x(hw, cin, s, 4) for s in (7, 8)], info=info).passed


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(1, 4, 5, padding=2)],
                         ids=["strided", "wide_input", "grouped", "25_taps"])
def test_other_convs_stay_as_they_are(conv, tmp_path):
    """Strided stems (measured slower as slices), convs over > 4 channels, grouped convs and kernels of more
    than 9 taps keep their kernel."""
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.randn(2, conv.in_channels, 10, 10)
    q = convert(calibrate(prepare(model, (x[:1],)), [x], progress=False))
    export_onnx(q, (x[:1],), tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    stem = [n for n in graph.node if n.op_type == "Conv"][0]
    assert {a.name: list(a.ints) for a in stem.attribute}["kernel_shape"] == list(conv.kernel_size)
    assert "Slice" not in {n.op_type for n in graph.node}


def test_int8_activations_keep_the_plain_stem(tmp_path):
    """With int8 activations onnxruntime (x86) turns a Q → DQ pair into uint8 only when the two are adjacent:
    int8 patches would leave the stem in float, so the stem keeps its 3 × 3 kernel (and its int8 kernel)."""
    import onnx

    torch.manual_seed(0)
    model = Stem(1, 3, 0).eval()
    model(_x((9, 9), 1, 0, 1))
    q = convert(calibrate(prepare(model, (_x((9, 9), 1, 0, 1),)), [_x((9, 9), 1, 1, 8)], progress=False))
    path, opt = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    export_onnx(q, (_x((9, 9), 1, 0, 1),), path, OnnxExportConfig(activation_dtype=ActivationDType.INT8))
    stem = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"][0]
    assert {a.name: list(a.ints) for a in stem.attribute}["kernel_shape"] == [3, 3]
    _session(path, opt)
    assert "QLinearConv" in [n.op_type for n in onnx.load(str(opt)).graph.node]


class Tail(nn.Module):
    """A ResNet's last stage on a 32 × 32 image: 3 × 3 / stride 2 / pad 1 over 2 × 2, then 3 × 3 / pad 1 over
    1 × 1 (only taps that read padding dropped: [2, 2] and [1, 1]); a 3 × 3 / pad 1 over 4 × 4 keeps all."""

    def __init__(self):
        super().__init__()
        self.keep = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.last = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.keep(x))
        y = torch.relu(self.down(y[..., :2, :2]))
        return self.last(y).flatten(1)


def test_taps_reading_only_padding_are_cropped_bit_identically(tmp_path, monkeypatch):
    import onnx

    torch.manual_seed(0)
    model = Tail().eval()
    x = torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    q = convert(calibrate(prepare(model, (x[:1],)), [x], progress=False))
    info = export_onnx(q, (x[:1],), tmp_path / "new.onnx")
    with monkeypatch.context() as m:
        m.setattr(ops_quant, "CROP_PADDING_TAPS", False)
        export_onnx(q, (x[:1],), tmp_path / "plain.onnx")
    kernels = {}
    for t in ("new", "plain"):
        convs = [n for n in onnx.load(str(tmp_path / f"{t}.onnx")).graph.node if n.op_type == "Conv"]
        kernels[t] = [({a.name: list(a.ints) for a in c.attribute}["kernel_shape"],
                       {a.name: list(a.ints) for a in c.attribute}["pads"]) for c in convs]
    assert kernels["plain"] == [([3, 3], [1, 1, 1, 1])] * 3
    assert kernels["new"] == [([3, 3], [1, 1, 1, 1]), ([2, 2], [0, 0, 0, 0]), ([1, 1], [0, 0, 0, 0])]
    assert (tmp_path / "new.onnx").stat().st_size < (tmp_path / "plain.onnx").stat().st_size
    sessions = [_session(tmp_path / f"{t}.onnx", tmp_path / f"{t}.opt.onnx") for t in ("new", "plain")]
    xs = torch.randn(5, 8, 4, 4, generator=torch.Generator().manual_seed(2)).numpy()
    got, want = (s.run(None, {s.get_inputs()[0].name: xs})[0] for s in sessions)
    assert np.array_equal(got, want), np.abs(got - want).max()
    ops = [n.op_type for n in onnx.load(str(tmp_path / "new.opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops, ops
    assert verify_onnx(tmp_path / "new.onnx", q, [x[:4]], info=info).passed
