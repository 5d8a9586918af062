"""Activations, pooling, LayerNorm and Dropout with output quantizers, and the layer registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers import (
    QuantAdaptiveAvgPool2d,
    QuantAvgPool2d,
    QuantDropout,
    QuantGELU,
    QuantHardswish,
    QuantLayerNorm,
    QuantMaxPool2d,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSoftmax,
    QuantTanh,
)
from compress.layers.base import all_quantizers
from compress.quant.reference import dequantize, quantize
from compress.quant.reference_extra import (
    avg_pool2d_int,
    layer_norm_int,
    lsb_agreement,
    lut_activation,
    max_pool2d_int,
    sigmoid,
    softmax_int,
)

_erf = np.vectorize(math.erf)

ACTIVATIONS = {
    "relu": (QuantReLU, nn.ReLU(), lambda x: np.maximum(x, 0)),
    "relu6": (QuantReLU6, nn.ReLU6(), lambda x: np.clip(x, 0, 6)),
    "hardswish": (QuantHardswish, nn.Hardswish(), lambda x: x * np.clip(x + 3, 0, 6) / 6),
    "gelu": (QuantGELU, nn.GELU(), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "gelu-tanh": (QuantGELU, nn.GELU("tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    "sigmoid": (QuantSigmoid, nn.Sigmoid(), sigmoid),
    "tanh": (QuantTanh, nn.Tanh(), np.tanh),
}


def _qp(q) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


def _calibrate_and_freeze(module, x):
    module.eval()
    with torch.no_grad():
        module(x)
    module.freeze()
    return module


def _assert_parity(y: torch.Tensor, codes: np.ndarray, out_qp) -> None:
    frac, max_lsb = lsb_agreement(y.detach().numpy(), dequantize(codes, *out_qp), out_qp[0])
    assert frac >= 0.99 and max_lsb <= 2.0, f"{frac:.4f} within 1 LSB, max {max_lsb:.2f} LSB"


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_lookup_table_reference(name):
    torch.manual_seed(0)
    quant_cls, float_mod, fn = ACTIVATIONS[name]
    act = _calibrate_and_freeze(quant_cls.from_float(float_mod, quantize_io=True), torch.randn(256) * 4)
    x = torch.randn(4, 64) * 4
    y = act(x)
    in_qp, out_qp = _qp(act.input_quant), _qp(act.output_quant)
    _assert_parity(y, lut_activation(quantize(x.numpy(), *in_qp, -128, 127), *in_qp, fn, *out_qp), out_qp)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_round_trip_and_output_quantizer_by_default(name):
    quant_cls, float_mod, _ = ACTIVATIONS[name]
    quant = quant_cls.from_float(float_mod)
    assert quant.output_quant is not None and quant.input_quant is None
    back = quant.to_float()
    assert type(back) is type(float_mod) and back.extra_repr() == float_mod.extra_repr()


def test_softmax_matches_reference_and_uses_the_unit_range():
    torch.manual_seed(1)
    sm = _calibrate_and_freeze(QuantSoftmax.from_float(nn.Softmax(dim=-1), quantize_io=True), torch.randn(8, 10) * 3)
    x = torch.randn(8, 10) * 3
    y = sm(x)
    in_qp, out_qp = _qp(sm.input_quant), _qp(sm.output_quant)
    assert out_qp[0] <= 1 / 255 + 1e-9  # probabilities: the grid covers at most [0, 1]
    _assert_parity(y, softmax_int(quantize(x.numpy(), *in_qp, -128, 127), *in_qp, *out_qp), out_qp)
    assert QuantSoftmax.from_float(nn.Softmax(dim=1)).to_float().dim == 1


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_reference(affine):
    torch.manual_seed(2)
    float_ln = nn.LayerNorm(16, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            float_ln.weight.uniform_(0.5, 1.5)
            float_ln.bias.uniform_(-0.5, 0.5)
    ln = _calibrate_and_freeze(QuantLayerNorm.from_float(float_ln, quantize_io=True), torch.randn(32, 16) * 2 + 1)
    x = torch.randn(3, 5, 16) * 2 + 1
    y = ln(x)
    in_qp, out_qp = _qp(ln.input_quant), _qp(ln.output_quant)
    gamma = float_ln.weight.detach().numpy() if affine else None
    beta = float_ln.bias.detach().numpy() if affine else None
    codes = layer_norm_int(quantize(x.numpy(), *in_qp, -128, 127), *in_qp, gamma, beta, float_ln.eps, *out_qp)
    _assert_parity(y, codes, out_qp)
    back = ln.to_float()
    assert type(back) is nn.LayerNorm
    torch.testing.assert_close(back(x), float_ln(x), rtol=0, atol=0)


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 1, 1)])
def test_avg_pool_matches_reference(kernel, stride, padding):
    torch.manual_seed(3)
    pool = _calibrate_and_freeze(QuantAvgPool2d(kernel, stride, padding, quantize_io=True), torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    y = pool(x)
    in_qp, out_qp = _qp(pool.input_quant), _qp(pool.output_quant)
    codes = avg_pool2d_int(quantize(x.numpy(), *in_qp, -128, 127), *in_qp, kernel, stride, *out_qp, padding)
    assert codes.shape == tuple(y.shape)
    _assert_parity(y, codes, out_qp)


def test_adaptive_avg_pool_matches_reference():
    torch.manual_seed(4)
    pool = _calibrate_and_freeze(QuantAdaptiveAvgPool2d.from_float(nn.AdaptiveAvgPool2d(1), quantize_io=True),
                                 torch.randn(4, 8, 5, 5))
    x = torch.randn(4, 8, 5, 5)
    y = pool(x)
    in_qp, out_qp = _qp(pool.input_quant), _qp(pool.output_quant)
    _assert_parity(y, avg_pool2d_int(quantize(x.numpy(), *in_qp, -128, 127), *in_qp, 5, 5, *out_qp), out_qp)
    assert type(pool.to_float()) is nn.AdaptiveAvgPool2d and pool.to_float().output_size == 1


def test_max_pool_keeps_the_input_grid():
    torch.manual_seed(5)
    pool = QuantMaxPool2d.from_float(nn.MaxPool2d(2), quantize_io=True, quantize_output=False)
    assert pool.output_quant is None
    _calibrate_and_freeze(pool, torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    in_qp = _qp(pool.input_quant)
    expected = dequantize(max_pool2d_int(quantize(x.numpy(), *in_qp, -128, 127), 2, 2), *in_qp)
    np.testing.assert_allclose(pool(x).numpy(), expected, rtol=0, atol=1e-6)
    assert QuantMaxPool2d(2).output_quant is None and QuantMaxPool2d(2, quantize_output=True).output_quant is not None
    with pytest.raises(ConfigError, match="return_indices"):
        QuantMaxPool2d(2, return_indices=True, quantize_output=True)
    assert type(pool.to_float()) is nn.MaxPool2d


def test_dropout_is_identity_in_eval_and_active_in_train():
    torch.manual_seed(6)
    drop = QuantDropout.from_float(nn.Dropout(0.5))
    assert drop.output_quant is None and not all_quantizers(drop)
    x = torch.randn(1000) + 5
    torch.testing.assert_close(drop.eval()(x), x, rtol=0, atol=0)
    y = drop.train()(x)
    assert 300 < int((y == 0).sum()) < 700
    assert type(drop.to_float()) is nn.Dropout and drop.to_float().p == 0.5


def test_activation_gradients_flow_straight_through():
    torch.manual_seed(7)
    act = QuantGELU(quantize_io=True).train()
    act(torch.randn(64))
    for q in all_quantizers(act):
        q.start_quantizing()
    x = torch.randn(64, requires_grad=True)
    act(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_from_float_rejects_the_wrong_module():
    with pytest.raises(ConfigError, match="expects a ReLU"):
        QuantReLU.from_float(nn.ReLU6())
