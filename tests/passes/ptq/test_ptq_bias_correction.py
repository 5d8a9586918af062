"""Bias correction removes the mean output shift quantization causes (checked with numpy quantization math)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.passes import calibrate, prepare
from compress.passes.ptq import BiasCorrectionConfig, correct_bias
from compress.quant.config import QuantConfig
from compress.quant.reference import fake_quantize
from compress.quant.spec import PerChannel, QuantSpec

# 4-bit weights: rounding errors large enough that the shift they cause stands far above float noise.
WEIGHT_4BIT = QuantSpec(bits=4, signed=True, symmetric=True, granularity=PerChannel(0), narrow_range=True)


def _numpy_int_output(x: np.ndarray, w: np.ndarray, b: np.ndarray, in_q) -> np.ndarray:
    """The simulated int8 layer in numpy: input on its calibrated grid, weights on the 4-bit per-channel grid."""
    scale, zp = float(in_q.scale), int(in_q.zero_point)
    xq = fake_quantize(x, scale, zp, -128, 127)
    w_scale = np.abs(w).max(1) / 7
    wq = fake_quantize(w, w_scale, 0, -7, 7, axis=0)
    return xq @ wq.T + b


def test_bias_correction_removes_the_mean_shift():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 6)).eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (512, 12)).astype(np.float32)  # non-zero mean inputs (post-ReLU-like)
    held_out = rng.uniform(0, 1, (512, 12)).astype(np.float32)
    prepared = calibrate(prepare(net, torch.from_numpy(x[:1]), QuantConfig(weight=WEIGHT_4BIT)),
                         [torch.from_numpy(x)], progress=False)
    layer = prepared.get_submodule("0")
    in_q = prepared.get_submodule("input_1_act_quant")
    w, b = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()

    def shift(data, bias):
        return (_numpy_int_output(data, w, bias, in_q) - (data @ w.T + b)).mean(0)

    before = shift(x, b)
    assert np.abs(before).max() > 1e-3
    report = correct_bias(prepared, [torch.from_numpy(x)], BiasCorrectionConfig(samples=512))
    new_b = layer.bias.detach().numpy()
    np.testing.assert_allclose(report["layers"][0]["max_abs_shift"], np.abs(before).max(), rtol=1e-3)
    assert np.abs(shift(x, new_b)).max() < 1e-5 + 1e-3 * np.abs(before).max()
    # The shift is a property of the weights' rounding, so it is gone on unseen data too.
    assert np.abs(shift(held_out, new_b)).max() < 0.2 * np.abs(shift(held_out, b)).max()


def test_bias_correction_gives_a_layer_without_bias_one():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    data = [torch.rand(16, 3, 6, 6)]
    prepared = calibrate(prepare(net, data[0][:1], QuantConfig(weight=WEIGHT_4BIT)), data, progress=False)
    correct_bias(prepared, data)
    assert prepared.get_submodule("0").bias is not None and prepared.get_submodule("0").bias.abs().max() > 0
