"""Golden cases per emitted ONNX op, run in onnxruntime and checked against numpy.

Quantized ops are checked against ``compress.quant.reference`` (numpy integer math: quantize, int32
accumulate, requantize) within 1 LSB; float ops against numpy formulas (or torch eager for convolutions).
Quantizers get their qparams from a calibration range, so the expected values follow from the test's own
numbers, not from the exporter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.exporters import OnnxExportConfig, export_onnx
from compress.layers import FusedActivation, QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear
from compress.quant import ACT_INT8, Quantizer
from compress.quant import reference as R

pytestmark = pytest.mark.onnx


# -- helpers --------------------------------------------------------------------------------------------
def act_quant(lo: float, hi: float) -> Quantizer:
    """A frozen int8 activation quantizer calibrated on exactly [lo, hi]."""
    q = Quantizer(ACT_INT8)
    q(torch.tensor([lo, hi]))
    q.start_quantizing()
    q.freeze()
    return q


def qparams(q: Quantizer) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


def export_and_run(model: nn.Module, inputs: tuple, tmp_path, **cfg) -> tuple[list[np.ndarray], object, object]:
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    info = export_onnx(model.eval(), inputs, path, OnnxExportConfig(**cfg))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return sess.run(None, feeds), info, onnx.load(str(path))


def codes(y: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """Back from the DequantizeLinear output to int8 codes (same grid for uint8 and int8 storage)."""
    return np.round(y.astype(np.float64) / scale).astype(np.int64) + zp


def assert_within_1lsb(got_codes: np.ndarray, want_codes: np.ndarray) -> None:
    diff = np.abs(got_codes - want_codes)
    assert diff.max() <= 1, f"max diff {diff.max()} LSB"
    if diff.size >= 100:
        # float32 vs float64 rounding moves a few elements by one code, never most of them.
        assert (diff == 0).mean() >= 0.9, f"only {(diff == 0).mean():.1%} exact"


def op_types(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


class QuantWrap(nn.Module):
    """q_in → layer → q_out, as convert() leaves a quant layer between two quantizer nodes."""

    def __init__(self, layer: nn.Module, in_range, out_range):
        super().__init__()
        self.q_in = act_quant(*in_range)
        self.layer = layer
        self.q_out = act_quant(*out_range)
        layer.input_scale = self.q_in.scale.clone()
        layer.freeze()

    def forward(self, x):
        return self.q_out(self.layer(self.q_in(x)))


def weight_reference(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 codes and scales, computed in numpy."""
    w = w.astype(np.float64)
    red = tuple(d for d in range(w.ndim) if d != axis)
    scale = np.maximum(np.abs(w).max(axis=red), 1e-8) / 127
    return R.quantize(w, scale, 0, -127, 127, axis=axis), scale


# -- quantized conv / linear ----------------------------------------------------------------------------
CONV_CASES = [
    # (cin, cout, kernel, stride, padding, dilation, groups, input HxW)
    (1, 1, 3, 1, 0, 1, 1, (5, 5)),
    (3, 4, 3, 2, 1, 1, 1, (7, 7)),
    (4, 4, 3, 1, 1, 1, 4, (6, 6)),  # depthwise
    (2, 6, 3, 1, 2, 2, 2, (8, 8)),  # grouped + dilated
]


def test_conv_one_channel_known_weights(tmp_path):
    conv = nn.Conv2d(1, 1, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1, 2, 3], [-4, 5, -6], [7, -8, 127]], dtype=torch.float32).reshape(1, 1, 3, 3)
                          * 0.01)
        conv.bias.fill_(0.05)
    model = QuantWrap(QuantConv2d.from_float(conv), (-1.28, 1.27), (-4.0, 4.0))
    x = torch.linspace(-1.5, 1.5, 25).reshape(1, 1, 5, 5)
    (y,), _, proto = export_and_run(model, (x,), tmp_path)
    s_in, z_in = qparams(model.q_in)
    s_out, z_out = qparams(model.q_out)
    # Weights are exactly codes × 0.01 (max code 127), so the int8 weights are the codes themselves.
    wq = np.array([[1, 2, 3], [-4, 5, -6], [7, -8, 127]]).reshape(1, 1, 3, 3)
    bq = R.quantize_bias([0.05], s_in, [0.01])
    xq = R.quantize(x.numpy(), s_in, z_in, -128, 127)
    acc = R.conv_nd_int32(xq, z_in, wq, bq)
    want = R.requantize(acc, [s_in * 0.01], s_out, z_out, -128, 127)
    assert_within_1lsb(codes(y, s_out, z_out), want)
    assert op_types(proto).count("Conv") == 1


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quant_conv2d_matches_integer_reference(case, dtype, tmp_path):
    cin, cout, k, stride, pad, dil, groups, hw = case
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups)
    model = QuantWrap(QuantConv2d.from_float(conv), (-2.0, 2.0), (-3.0, 3.0))
    x = torch.randn(2, cin, *hw)
    (y,), _, _ = export_and_run(model, (x,), tmp_path, activation_dtype=dtype)
    s_in, z_in = qparams(model.q_in)
    s_out, z_out = qparams(model.q_out)
    wq, ws = weight_reference(conv.weight.detach().numpy())
    bq = R.quantize_bias(conv.bias.detach().numpy(), s_in, ws)
    acc = R.conv_nd_int32(R.quantize(x.numpy(), s_in, z_in, -128, 127), z_in, wq, bq, stride, pad, dil, groups)
    want = R.requantize(acc, s_in * ws, s_out, z_out, -128, 127)
    assert_within_1lsb(codes(y, s_out, z_out), want)


def test_quant_conv1d_matches_integer_reference(tmp_path):
    torch.manual_seed(1)
    conv = nn.Conv1d(3, 5, 3, stride=2, padding=1)
    model = QuantWrap(QuantConv1d.from_float(conv), (-2.0, 2.0), (-2.0, 2.0))
    x = torch.randn(2, 3, 11)
    (y,), _, _ = export_and_run(model, (x,), tmp_path)
    s_in, z_in = qparams(model.q_in)
    s_out, z_out = qparams(model.q_out)
    wq, ws = weight_reference(conv.weight.detach().numpy())
    acc = R.conv_nd_int32(R.quantize(x.numpy(), s_in, z_in, -128, 127), z_in, wq,
                          R.quantize_bias(conv.bias.detach().numpy(), s_in, ws), 2, 1)
    assert_within_1lsb(codes(y, s_out, z_out), R.requantize(acc, s_in * ws, s_out, z_out, -128, 127))


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)], ids=["gemm_2d", "matmul_3d"])
def test_quant_linear_matches_integer_reference(shape, tmp_path):
    torch.manual_seed(2)
    lin = nn.Linear(6, 5)
    model = QuantWrap(QuantLinear.from_float(lin), (-2.0, 2.0), (-3.0, 3.0))
    x = torch.randn(*shape)
    (y,), _, proto = export_and_run(model, (x,), tmp_path)
    s_in, z_in = qparams(model.q_in)
    s_out, z_out = qparams(model.q_out)
    wq, ws = weight_reference(lin.weight.detach().numpy())
    acc = R.linear_int32(R.quantize(x.numpy(), s_in, z_in, -128, 127), z_in, wq,
                         R.quantize_bias(lin.bias.detach().numpy(), s_in, ws))
    want = R.requantize(acc, s_in * ws, s_out, z_out, -128, 127, axis=-1)
    assert_within_1lsb(codes(y, s_out, z_out), want)
    assert ("Gemm" if len(shape) == 2 else "MatMul") in op_types(proto)
    # Weight int8 initializer → DequantizeLinear; Gemm's bias int32 → DequantizeLinear; MatMul's bias (a
    # separate Add, float in onnxruntime) is stored as the float32 values of those codes, still on their grid.
    dtypes = {i.name: i.data_type for i in proto.graph.initializer}
    assert 3 in dtypes.values()  # INT8
    if len(shape) == 2:
        assert 6 in dtypes.values()  # INT32
    else:
        from onnx import numpy_helper

        add = next(n for n in proto.graph.node if n.op_type == "Add")
        bias = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name in add.input)
        assert 6 not in dtypes.values() and bias.dtype == np.float32
        grid = bias.astype(np.float64) / (s_in * ws)
        assert np.abs(grid - np.round(grid)).max() < 1e-3
        assert np.abs(np.round(grid) - R.quantize_bias(lin.bias.detach().numpy(), s_in, ws)).max() <= 1


def _conv_relu_model(act: FusedActivation, out_range) -> QuantWrap:
    torch.manual_seed(3)
    layer = QuantConv2d.from_float(nn.Conv2d(2, 3, 3, padding=1))
    layer.activation = act
    return QuantWrap(layer, (-2.0, 2.0), out_range)


def _expected_conv_act(model: QuantWrap, x: torch.Tensor, hi: float | None) -> np.ndarray:
    conv = model.layer
    s_in, z_in = qparams(model.q_in)
    s_out, z_out = qparams(model.q_out)
    wq, ws = weight_reference(conv.weight.detach().numpy())
    acc = R.conv_nd_int32(R.quantize(x.numpy(), s_in, z_in, -128, 127), z_in, wq,
                          R.quantize_bias(conv.bias.detach().numpy(), s_in, ws), 1, 1)
    real = R.dequantize(acc, (s_in * ws).reshape(1, -1, 1, 1), 0).astype(np.float64)
    real = np.clip(real, 0, hi)
    return R.quantize(real, s_out, z_out, -128, 127)


def test_fused_relu_dropped_when_quantizer_clamps(tmp_path):
    model = _conv_relu_model(FusedActivation.RELU, (0.0, 3.0))  # zero point at the minimum code
    x = torch.randn(2, 2, 6, 6)
    (y,), _, proto = export_and_run(model, (x,), tmp_path)
    assert "Relu" not in op_types(proto)
    s_out, z_out = qparams(model.q_out)
    assert_within_1lsb(codes(y, s_out, z_out), _expected_conv_act(model, x, None))


def test_fused_relu_kept_when_quantizer_range_is_signed(tmp_path):
    model = _conv_relu_model(FusedActivation.RELU, (-1.0, 3.0))
    x = torch.randn(2, 2, 6, 6)
    (y,), _, proto = export_and_run(model, (x,), tmp_path)
    assert "Relu" in op_types(proto)
    s_out, z_out = qparams(model.q_out)
    assert_within_1lsb(codes(y, s_out, z_out), _expected_conv_act(model, x, None))


@pytest.mark.parametrize("out_hi,clip_kept", [(5.0, False), (9.0, True)])
def test_fused_relu6_clip(out_hi, clip_kept, tmp_path):
    model = _conv_relu_model(FusedActivation.RELU6, (0.0, out_hi))
    x = torch.randn(2, 2, 6, 6) * 4
    (y,), _, proto = export_and_run(model, (x,), tmp_path)
    assert ("Clip" in op_types(proto)) == clip_kept
    s_out, z_out = qparams(model.q_out)
    assert_within_1lsb(codes(y, s_out, z_out), _expected_conv_act(model, x, 6.0))


# -- quantized elementwise ops (functional ops between quantizer nodes) ----------------------------------
class TwoInput(nn.Module):
    def __init__(self, fn, ranges=((-1.0, 1.0), (-2.0, 0.5)), out_range=(-2.5, 2.5)):
        super().__init__()
        self.fn = fn
        self.qa, self.qb, self.q_out = act_quant(*ranges[0]), act_quant(*ranges[1]), act_quant(*out_range)

    def forward(self, a, b):
        return self.q_out(self.fn(self.qa(a), self.qb(b)))


def _two_inputs(shape_a=(2, 3, 4, 4), shape_b=(2, 3, 4, 4)):
    g = torch.Generator().manual_seed(4)
    return torch.randn(*shape_a, generator=g), torch.randn(*shape_b, generator=g)


def _quantized(model: TwoInput, a, b):
    (sa, za), (sb, zb) = qparams(model.qa), qparams(model.qb)
    return R.quantize(a.numpy(), sa, za, -128, 127), sa, za, R.quantize(b.numpy(), sb, zb, -128, 127), sb, zb


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quant_add(dtype, tmp_path):
    model = TwoInput(lambda a, b: a + b)
    a, b = _two_inputs()
    (y,), _, _ = export_and_run(model, (a, b), tmp_path, activation_dtype=dtype)
    so, zo = qparams(model.q_out)
    want = R.add_int(*_quantized(model, a, b), so, zo)
    assert_within_1lsb(codes(y, so, zo), want)


def test_quant_mul(tmp_path):
    model = TwoInput(torch.mul, out_range=(-2.0, 2.0))
    a, b = _two_inputs()
    (y,), _, _ = export_and_run(model, (a, b), tmp_path)
    so, zo = qparams(model.q_out)
    assert_within_1lsb(codes(y, so, zo), R.mul_int(*_quantized(model, a, b), so, zo))


def test_quant_matmul(tmp_path):
    model = TwoInput(torch.matmul, out_range=(-4.0, 4.0))
    a, b = _two_inputs((2, 3, 5), (2, 5, 4))
    (y,), _, _ = export_and_run(model, (a, b), tmp_path)
    so, zo = qparams(model.q_out)
    aq, sa, za, bq, sb, zb = _quantized(model, a, b)
    want = R.requantize(R.matmul_int32(aq, za, bq, zb), sa * sb, so, zo, -128, 127, axis=None)
    assert_within_1lsb(codes(y, so, zo), want)


def test_quant_cat(tmp_path):
    # Ranges without round numbers: clamped inputs would otherwise land exactly on rounding ties.
    model = TwoInput(lambda a, b: torch.cat([a, b], dim=1), ((-1.1, 0.93), (-1.7, 0.61)), (-2.3, 2.9))
    a, b = _two_inputs()
    (y,), _, _ = export_and_run(model, (a, b), tmp_path)
    so, zo = qparams(model.q_out)
    aq, sa, za, bq, sb, zb = _quantized(model, a, b)
    real = np.concatenate([R.dequantize(aq, sa, za), R.dequantize(bq, sb, zb)], axis=1)
    assert_within_1lsb(codes(y, so, zo), R.quantize(real, so, zo, -128, 127))


def test_quant_embedding_gathers_int8_rows(tmp_path):
    torch.manual_seed(5)
    emb = QuantEmbedding.from_float(nn.Embedding(10, 4))
    emb.freeze()
    idx = torch.tensor([[1, 2, 9], [0, 0, 5]])
    (y,), _, proto = export_and_run(emb, (idx,), tmp_path)
    wq, ws = weight_reference(emb.weight.detach().numpy())
    want = R.dequantize(wq, ws, 0, axis=0)[idx.numpy()]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    assert op_types(proto) == ["DequantizeLinear", "Gather"]


def test_maxpool_and_flatten_keep_the_input_grid(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = act_quant(-1.0, 1.0)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            return torch.flatten(self.pool(self.q(x)), 1)

    x = torch.randn(2, 3, 4, 4)
    (y,), info, proto = export_and_run(Net(), (x,), tmp_path)
    s, z = qparams(Net().q)
    xr = R.fake_quantize(x.numpy(), s, z, -128, 127)
    want = xr.reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5)).reshape(2, -1)
    np.testing.assert_allclose(y, want, atol=1e-6)
    # Q/DQ re-emitted after each preserving op, with the input's qparams; the output reports them.
    assert op_types(proto).count("QuantizeLinear") == 3
    assert info.output_scales[0] == pytest.approx((s, z))


# -- float ops (fp32 graphs) against numpy ---------------------------------------------------------------
class Fn(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, x):
        return self.fn(x, *self.mods)


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_layer_norm(x, k, w=None, b=None, eps=1e-5):
    axes = tuple(range(-k, 0))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def _np_maxpool_3x3_s2_p1(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return win.max(axis=(-1, -2))


_erf = np.vectorize(math.erf)
_SQ = math.sqrt(2 / math.pi)
FLOAT_CASES = {
    "relu": (lambda x: torch.relu(x), lambda x: np.maximum(x, 0)),
    "relu_module": (lambda x, m: m(x), lambda x: np.maximum(x, 0), nn.ReLU()),
    "relu6": (lambda x: F.relu6(x), lambda x: np.clip(x, 0, 6)),
    "hardswish": (lambda x, m: m(x), lambda x: x * np.clip(x + 3, 0, 6) / 6, nn.Hardswish()),
    "gelu_erf": (lambda x, m: m(x), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), nn.GELU()),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(_SQ * (x + 0.044715 * x**3)))),
    "sigmoid": (lambda x: torch.sigmoid(x), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (lambda x, m: m(x), np.tanh, nn.Tanh()),
    "silu": (lambda x: F.silu(x), lambda x: x / (1 + np.exp(-x))),
    "leaky_relu": (lambda x, m: m(x), lambda x: np.where(x > 0, x, 0.1 * x), nn.LeakyReLU(0.1)),
    "softmax_dim1": (lambda x, m: m(x), lambda x: _np_softmax(x, 1), nn.Softmax(dim=1)),
    "softmax_last": (lambda x: x.softmax(-1), lambda x: _np_softmax(x, -1)),
    "layer_norm": (lambda x, m: m(x), lambda x: _np_layer_norm(x, 2), nn.LayerNorm([4, 5])),
    "maxpool": (lambda x, m: m(x), _np_maxpool_3x3_s2_p1, nn.MaxPool2d(3, 2, 1)),
    "avgpool": (lambda x, m: m(x), lambda x: x[..., :4, :].reshape(2, 3, 2, 2, 5).mean(axis=3), nn.AvgPool2d((2, 1))),
    "gap": (lambda x, m: m(x), lambda x: x.mean(axis=(2, 3), keepdims=True), nn.AdaptiveAvgPool2d(1)),
    "adaptive_2x1": (lambda x, m: m(x)[:, :, :, :],
                     lambda x: x[..., :4, :].reshape(2, 3, 2, 2, 5).mean(axis=(3, 4)).reshape(2, 3, 2, 1),
                     nn.AdaptiveAvgPool2d((2, 1))),
    "flatten": (lambda x, m: m(x), lambda x: x.reshape(2, -1), nn.Flatten()),
    "flatten_2": (lambda x: torch.flatten(x, 2), lambda x: x.reshape(2, 3, -1)),
    "view_size": (lambda x: x.view(x.size(0), -1, 5), lambda x: x.reshape(2, -1, 5)),
    "permute": (lambda x: x.permute(0, 2, 3, 1), lambda x: x.transpose(0, 2, 3, 1)),
    "transpose": (lambda x: x.transpose(1, -1), lambda x: x.swapaxes(1, 3)),
    "squeeze_unsqueeze": (lambda x: x.unsqueeze(1).mean(-1).squeeze(1), lambda x: x.mean(-1)),
    "mean_dims_keepdim": (lambda x: x.mean((2, 3), keepdim=True), lambda x: x.mean(axis=(2, 3), keepdims=True)),
    "mean_all": (lambda x: torch.mean(x), lambda x: np.asarray(x.mean())),
    "scalar_arith": (lambda x: (2.0 * x - 1) / 4 + x * x, lambda x: (2.0 * x - 1) / 4 + x * x),
    "rsub_neg": (lambda x: 1 - (-x), lambda x: 1 + x),
    "cat_self": (lambda x: torch.cat([x, x * 2], dim=-1), lambda x: np.concatenate([x, 2 * x], -1)),
    "matmul_self": (lambda x: x @ x.transpose(-1, -2), lambda x: x @ x.swapaxes(-1, -2)),
    "getitem_slice": (lambda x: x[:, 1:, ::2, -1], lambda x: x[:, 1:, ::2, -1]),
    "getitem_ellipsis_none": (lambda x: x[..., 0][:, None], lambda x: x[..., 0][:, None]),
    "dropout_identity": (lambda x, m: m(x) + 0, lambda x: x, nn.Dropout(0.5)),
}


@pytest.mark.parametrize("name", sorted(FLOAT_CASES))
def test_float_op_matches_numpy(name, tmp_path):
    fn, ref, *mods = FLOAT_CASES[name]
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(6)) * 2
    (y,), info, _ = export_and_run(Fn(fn, *mods), (x,), tmp_path)
    want = ref(x.numpy().astype(np.float64))
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert info.output_scales == [None]


def test_layer_norm_decomposed_below_opset_17(tmp_path):
    ln = nn.LayerNorm(5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5)
    (y,), info, proto = export_and_run(ln, (x,), tmp_path, opset=13)
    assert "LayerNormalization" not in op_types(proto) and info.opset == 13
    want = _np_layer_norm(x.numpy().astype(np.float64), 1, ln.weight.detach().numpy(), ln.bias.detach().numpy())
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_hardswish_decomposed_below_opset_14(tmp_path):
    x = torch.linspace(-5, 5, 40).reshape(2, 20)
    (y,), _, proto = export_and_run(nn.Hardswish(), (x,), tmp_path, opset=13)
    assert "HardSwish" not in op_types(proto)
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(y, xn * np.clip(xn + 3, 0, 6) / 6, atol=1e-6)


def test_batchnorm_linear_embedding_float(tmp_path):
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 4, 4)
    (y,), _, _ = export_and_run(bn, (x,), tmp_path)
    p = {k: v.detach().numpy().reshape(1, -1, 1, 1) for k, v in bn.state_dict().items() if v.dim() == 1}
    want = (x.numpy() - p["running_mean"]) / np.sqrt(p["running_var"] + bn.eps) * p["weight"] + p["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)

    lin = nn.Linear(5, 3)
    for shape in [(4, 5), (2, 4, 5)]:
        x = torch.randn(*shape)
        (y,), _, _ = export_and_run(lin, (x,), tmp_path)
        np.testing.assert_allclose(y, x.numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy(),
                                   rtol=1e-5, atol=1e-5)

    emb = nn.Embedding(7, 3)
    idx = torch.tensor([[0, 6, 2]])
    (y,), _, _ = export_and_run(emb, (idx,), tmp_path)
    np.testing.assert_array_equal(y, emb.weight.detach().numpy()[idx.numpy()])


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
                                  nn.Conv2d(3, 3, 3, padding="same", dilation=2, groups=3),
                                  nn.Conv2d(2, 2, 4, padding="same"), nn.Conv1d(3, 4, 5, padding=2, dilation=2)],
                         ids=["grouped_strided", "depthwise_same_dilated", "same_even_kernel", "conv1d"])
def test_float_conv_matches_torch(conv, tmp_path):
    # torch eager is the reference here: the exporter under test never runs F.conv*.
    shape = (2, conv.in_channels, 9, 9) if isinstance(conv, nn.Conv2d) else (2, conv.in_channels, 12)
    x = torch.randn(*shape)
    (y,), _, _ = export_and_run(conv, (x,), tmp_path)
    np.testing.assert_allclose(y, conv(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# -- eager quant wrapper layers (hand-built models) ------------------------------------------------------
def _calibrated(module: nn.Module, *inputs) -> nn.Module:
    module(*inputs)
    for q in module.modules():
        if isinstance(q, Quantizer):
            q.start_quantizing()
            q.freeze()
    return module.eval()


def test_quant_add_and_cat_modules(tmp_path):
    from compress.layers import QuantAdd, QuantCat

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.add = QuantAdd()
            self.cat = QuantCat(dim=1)

        def forward(self, a, b):
            return self.cat([self.add(a, b), b])

    a, b = _two_inputs()
    net = _calibrated(Net(), a * 1.3, b * 1.3)  # calibrate on a wider range than the test inputs
    (y,), _, proto = export_and_run(net, (a, b), tmp_path)
    aq_s, aq_z = qparams(net.add.input_quants[0])
    bq_s, bq_z = qparams(net.add.input_quants[1])
    so, zo = qparams(net.add.output_quant)
    aq, bq = R.quantize(a.numpy(), aq_s, aq_z, -128, 127), R.quantize(b.numpy(), bq_s, bq_z, -128, 127)
    sum_q = R.add_int(aq, aq_s, aq_z, bq, bq_s, bq_z, so, zo)
    c0_s, c0_z = qparams(net.cat.input_quants[0])
    c1_s, c1_z = qparams(net.cat.input_quants[1])
    co_s, co_z = qparams(net.cat.output_quant)
    parts = [R.fake_quantize(R.dequantize(sum_q, so, zo), c0_s, c0_z, -128, 127),
             R.fake_quantize(b.numpy(), c1_s, c1_z, -128, 127)]
    want = R.quantize(np.concatenate(parts, axis=1), co_s, co_z, -128, 127)
    assert_within_1lsb(codes(y, co_s, co_z), want)
    assert op_types(proto).count("Concat") == 1


def test_quant_relu_module_keeps_its_own_output_grid(tmp_path):
    from compress.layers import QuantReLU

    relu = QuantReLU.from_float(nn.ReLU(), quantize_io=True)
    x = torch.randn(2, 8)
    relu = _calibrated(relu, x * 1.2)
    (y,), _, proto = export_and_run(relu, (x,), tmp_path)
    si, zi = qparams(relu.input_quant)
    so, zo = qparams(relu.output_quant)
    want = R.quantize(np.maximum(R.fake_quantize(x.numpy(), si, zi, -128, 127), 0), so, zo, -128, 127)
    assert_within_1lsb(codes(y, so, zo), want)
