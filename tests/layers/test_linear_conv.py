"""QuantLinear / QuantConv1d / QuantConv2d / QuantConvBn2d against the numpy integer reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from compress.layers import QuantConv1d, QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d, QuantLinear
from compress.layers.base import all_quantizers
from compress.quant import QuantConfig
from compress.quant.reference import (
    conv_nd_int32,
    dequantize,
    linear_int32,
    quantize,
    quantize_bias,
    requantize,
)
from compress.quant.reference_extra import lsb_agreement, quantize_weight
from compress.quant.spec import WEIGHT_INT8_PER_TENSOR


def _calibrate_and_freeze(layer: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    layer.eval()
    with torch.no_grad():
        layer(*inputs)
    layer.freeze()
    return layer


def _qp(q) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


def _assert_parity(y: torch.Tensor, ref_codes: np.ndarray, out_qp: tuple[float, int]) -> None:
    expected = dequantize(ref_codes, *out_qp)
    frac, max_lsb = lsb_agreement(y.detach().cpu().numpy(), expected, out_qp[0])
    assert frac >= 0.99, f"only {frac:.4f} of elements within 1 LSB (max {max_lsb:.2f} LSB)"
    assert max_lsb <= 2.0, f"max difference {max_lsb:.2f} LSB"


@pytest.mark.parametrize("per_channel", [True, False])
def test_linear_matches_integer_reference(per_channel):
    torch.manual_seed(0)
    config = QuantConfig() if per_channel else QuantConfig(weight=WEIGHT_INT8_PER_TENSOR)
    layer = QuantLinear.from_float(nn.Linear(16, 8), config, quantize_io=True)
    calib = torch.randn(64, 16)
    _calibrate_and_freeze(layer, calib)
    x = torch.randn(32, 16)
    y = layer(x)

    w = layer.weight.detach().numpy()
    wq, w_scale = quantize_weight(w, axis=0 if per_channel else None)
    np.testing.assert_allclose(layer.weight_quant.scale.numpy(), w_scale, rtol=1e-6)
    s_in, z_in = _qp(layer.input_quant)
    xq = quantize(x.numpy(), s_in, z_in, -128, 127)
    bq = quantize_bias(layer.bias.detach().numpy(), s_in, w_scale)
    acc = linear_int32(xq, z_in, wq, bq)
    out_qp = _qp(layer.output_quant)
    _assert_parity(y, requantize(acc, s_in * w_scale, *out_qp, -128, 127, axis=-1), out_qp)


CONV2D_CASES = {
    "plain": dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    "strided-grouped": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, groups=2),
    "depthwise-dilated": dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=6),
    "rect-no-bias": dict(in_channels=2, out_channels=4, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1),
                         bias=False),
}


@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_conv2d_matches_integer_reference(case):
    torch.manual_seed(1)
    kwargs = CONV2D_CASES[case]
    layer = QuantConv2d.from_float(nn.Conv2d(**kwargs), quantize_io=True)
    _calibrate_and_freeze(layer, torch.randn(4, kwargs["in_channels"], 9, 9))
    x = torch.randn(2, kwargs["in_channels"], 9, 9)
    y = layer(x)

    wq, w_scale = quantize_weight(layer.weight.detach().numpy(), axis=0)
    s_in, z_in = _qp(layer.input_quant)
    xq = quantize(x.numpy(), s_in, z_in, -128, 127)
    bq = None if layer.bias is None else quantize_bias(layer.bias.detach().numpy(), s_in, w_scale)
    acc = conv_nd_int32(xq, z_in, wq, bq, layer.stride, layer.padding, layer.dilation, layer.groups)
    out_qp = _qp(layer.output_quant)
    assert acc.shape == tuple(y.shape)
    _assert_parity(y, requantize(acc, s_in * w_scale, *out_qp, -128, 127, axis=1), out_qp)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv1d_matches_integer_reference(groups):
    torch.manual_seed(2)
    layer = QuantConv1d.from_float(nn.Conv1d(4, 8, 3, stride=2, padding=1, groups=groups), quantize_io=True)
    _calibrate_and_freeze(layer, torch.randn(4, 4, 20))
    x = torch.randn(3, 4, 20)
    y = layer(x)
    wq, w_scale = quantize_weight(layer.weight.detach().numpy(), axis=0)
    s_in, z_in = _qp(layer.input_quant)
    xq = quantize(x.numpy(), s_in, z_in, -128, 127)
    bq = quantize_bias(layer.bias.detach().numpy(), s_in, w_scale)
    acc = conv_nd_int32(xq, z_in, wq, bq, layer.stride, layer.padding, layer.dilation, groups)
    out_qp = _qp(layer.output_quant)
    _assert_parity(y, requantize(acc, s_in * w_scale, *out_qp, -128, 127, axis=1), out_qp)


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(5, 3),
    lambda: nn.Conv1d(2, 4, 3, padding=1),
    lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False),
])
def test_from_float_to_float_round_trip(make):
    torch.manual_seed(3)
    float_mod = make()
    quant_cls = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}[type(float_mod)]
    back = quant_cls.from_float(float_mod).to_float()
    assert type(back) is type(float_mod)
    x = torch.randn(2, 5) if isinstance(float_mod, nn.Linear) else torch.randn(2, float_mod.in_channels,
                                                                              *([7] * (float_mod.weight.dim() - 2)))
    torch.testing.assert_close(back(x), float_mod(x), rtol=0, atol=0)


def test_from_float_rejects_wrong_type_and_padding_mode():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="expects a Conv2d"):
        QuantConv2d.from_float(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="padding_mode"):
        QuantConv2d.from_float(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


@pytest.mark.parametrize("make", [lambda: QuantLinear.from_float(nn.Linear(6, 4), quantize_io=True),
                                  lambda: QuantConv2d.from_float(nn.Conv2d(3, 4, 3), quantize_io=True)])
def test_gradients_flow_straight_through(make):
    torch.manual_seed(4)
    layer = make().train()
    shape = (8, 6) if isinstance(layer, nn.Linear) else (2, 3, 6, 6)
    with torch.no_grad():
        layer(torch.randn(shape))  # calibration pass
    for q in all_quantizers(layer):
        q.start_quantizing()
    x = torch.randn(shape, requires_grad=True)
    layer(x).square().sum().backward()
    for grad in (layer.weight.grad, layer.bias.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_state_dict_round_trip_restores_outputs():
    torch.manual_seed(5)
    a = QuantLinear.from_float(nn.Linear(6, 4), quantize_io=True).eval()
    with torch.no_grad():
        a(torch.randn(16, 6) * 3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = QuantLinear.from_float(nn.Linear(6, 4), quantize_io=True).eval()
    with torch.no_grad():
        b(torch.randn(16, 6))
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for layer in (a, b):
        for q in all_quantizers(layer):
            q.start_quantizing()
    x = torch.randn(5, 6)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    torch.testing.assert_close(b.output_quant.scale, a.output_quant.scale)


def test_fresh_layer_loads_state_dict_of_used_layer():
    a = QuantLinear.from_float(nn.Linear(6, 4))
    a(torch.randn(2, 6))
    QuantLinear.from_float(nn.Linear(6, 4)).load_state_dict(a.state_dict())


def _conv_bn(seed: int = 6, relu: bool = False):
    torch.manual_seed(seed)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    cls = QuantConvBnReLU2d if relu else QuantConvBn2d
    return conv, bn, cls.from_float(conv, bn)


def test_conv_bn_running_stats_update_in_train_then_stop_after_freeze():
    _, _, fused = _conv_bn()
    fused.train()
    mean0 = fused.bn.running_mean.clone()
    fused(torch.randn(4, 3, 8, 8) + 1.0)
    mean1 = fused.bn.running_mean.clone()
    assert not torch.allclose(mean0, mean1), "BN running mean did not move in train mode"
    assert int(fused.bn.num_batches_tracked) == 1
    fused.freeze_bn_stats()
    fused(torch.randn(4, 3, 8, 8) + 2.0)
    torch.testing.assert_close(fused.bn.running_mean, mean1, rtol=0, atol=0)


def test_conv_bn_train_output_normalises_with_batch_statistics():
    conv, bn, fused = _conv_bn()
    conv.train(), bn.train(), fused.train()
    x = torch.randn(8, 3, 8, 8)
    expected = bn(conv(x))  # float conv→BN with batch statistics
    got = fused(x)
    # Only weight quantization separates them (≈ 1/254 of each weight's range).
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    # Same batch statistics up to the weight-quantization error.
    torch.testing.assert_close(fused.bn.running_mean, bn.running_mean, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("relu", [False, True])
def test_conv_bn_folding_in_eval_equals_conv_then_bn(relu):
    conv, bn, fused = _conv_bn(relu=relu)
    conv.eval(), bn.eval(), fused.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = bn(conv(x))
    if relu:
        expected = torch.relu(expected)
    folded = fused.to_float()
    got_float = folded(x)
    torch.testing.assert_close(torch.relu(got_float) if relu else got_float, expected, rtol=1e-5, atol=1e-5)

    # The quantized eval forward is the int8 conv with the folded weight and bias.
    w_fold, b_fold = (t.detach().numpy() for t in fused.folded())
    wq, w_scale = quantize_weight(w_fold, axis=0)
    x_int = torch.round(x)  # integer-valued input so the float conv above is exact
    ref = conv_nd_int32(x_int.numpy().astype(np.int64), 0, wq, None, 1, 1) * w_scale.reshape(1, -1, 1, 1)
    ref = ref + b_fold.reshape(1, -1, 1, 1)
    if relu:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(fused(x_int).detach().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_conv_bn_freeze_keeps_eval_output():
    _, _, fused = _conv_bn()
    with torch.no_grad():
        fused.bn.running_var.fill_(0.01)  # folding multiplies the weight by ~10: the scales differ a lot
    fused.eval()
    x = torch.randn(2, 3, 8, 8)
    before = fused(x)
    fused.freeze()
    torch.testing.assert_close(fused(x), before)


def test_conv_bn_accepts_bn_without_affine():
    QuantConvBn2d.from_float(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
