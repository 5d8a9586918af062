"""AdaRound: learned rounding beats round-to-nearest at the layer output of a trained layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.passes import calibrate, prepare
from compress.passes.ptq import AdaRoundConfig, adaround
from compress.quant.config import QuantConfig
from compress.quant.spec import PerChannel, QuantSpec

WEIGHT_4BIT = QuantSpec(bits=4, signed=True, symmetric=True, granularity=PerChannel(0), narrow_range=True)


def _trained_layer(rng) -> tuple[nn.Module, np.ndarray]:
    """A linear layer fit to a teacher on correlated inputs (the case where errors of neighbours add up)."""
    torch.manual_seed(0)
    mix = rng.normal(size=(24, 24)).astype(np.float32)
    x = torch.from_numpy(rng.normal(size=(1024, 24)).astype(np.float32) @ mix)
    teacher = torch.from_numpy(rng.normal(size=(24, 8)).astype(np.float32))
    net = nn.Sequential(nn.Linear(24, 8))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        loss = ((net(x) - x @ teacher) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), mix


@pytest.mark.slow  # training the layer + 200 AdaRound steps: ~4-7 s on 2 shared cores
def test_adaround_beats_round_to_nearest_on_held_out_inputs():
    rng = np.random.default_rng(0)
    net, mix = _trained_layer(rng)
    calib = rng.normal(size=(256, 24)).astype(np.float32) @ mix
    held_out = rng.normal(size=(1024, 24)).astype(np.float32) @ mix
    prepared = calibrate(prepare(net, torch.from_numpy(calib[:1]), QuantConfig(weight=WEIGHT_4BIT)),
                         [torch.from_numpy(calib)], progress=False)
    adaround(prepared, [torch.from_numpy(calib)], AdaRoundConfig(iterations=200, samples=256))

    w = net[0].weight.detach().numpy().astype(np.float64)
    b = net[0].bias.detach().numpy()
    scale = np.abs(w).max(1, keepdims=True) / 7
    nearest = np.clip(np.round(w / scale), -7, 7) * scale
    learned = prepared.get_submodule("0").weight.detach().numpy().astype(np.float64)
    codes = learned / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the 4-bit grid
    assert np.all(np.abs(learned - w) <= scale * (1 + 1e-5))  # only floor or ceil of each weight
    assert (np.abs(codes - np.round(w / scale)) > 0.5).any()  # some weights rounded the other way

    def mse(weight):
        return float(np.mean((held_out @ weight.T + b - (held_out @ w.T + b)) ** 2))

    assert mse(learned) < 0.9 * mse(nearest)
