"""Automatic range selection: MSE on a heavy-tailed tensor, minmax on a uniform one, chosen per tensor."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.passes import calibrate, prepare
from compress.passes.ptq import AutoRangeConfig, select_ranges
from compress.quant.config import QuantConfig
from compress.quant.observers import AutoObserver
from compress.quant.spec import ACT_INT8


def _numpy_error(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of int8 asymmetric quantization of x on [lo, hi] (the TFLite activation grid)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255
    z = np.clip(np.round(-128 - lo / s), -128, 127)
    q = np.clip(np.round(x / s) + z, -128, 127)
    return float(np.mean(((q - z) * s - x) ** 2))


def _observe(x: np.ndarray) -> AutoObserver:
    obs = AutoObserver(ACT_INT8)
    for chunk in np.array_split(x, 4):  # several batches: the histogram is re-binned as the range grows
        obs(torch.tensor(chunk, dtype=torch.float32))
    return obs


def test_auto_picks_mse_on_a_heavy_tailed_tensor():
    x = np.random.default_rng(0).laplace(0, 1, 100_000)
    obs = _observe(x)
    assert obs.best() == "mse"
    ranges = obs.candidate_ranges()
    chosen = _numpy_error(x, *ranges["mse"])
    assert chosen < 0.95 * _numpy_error(x, *ranges["minmax"])
    assert chosen < 0.95 * _numpy_error(x, *ranges["percentile"])


def test_auto_picks_minmax_on_a_uniform_tensor():
    x = np.random.default_rng(1).uniform(-1, 3, 100_000)
    obs = _observe(x)
    assert obs.best() == "minmax"
    lo, hi = (float(v) for v in obs.range())
    assert (lo, hi) == (float(np.float32(x.min())), float(np.float32(x.max())))


def _output_mse(prepared, net, x) -> float:
    with torch.no_grad():
        return float(np.mean((prepared(x).numpy() - net(x).numpy()) ** 2))


def test_select_ranges_per_tensor_beats_every_global_choice():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    rng = np.random.default_rng(2)
    data = [torch.tensor(rng.laplace(0, 1, (256, 16)), dtype=torch.float32)]
    prepared = calibrate(prepare(net, data[0][:1], QuantConfig(observer="auto")), data, progress=False)
    quantizers = [m for m in prepared.modules() if isinstance(getattr(m, "observer", None), AutoObserver)]
    assert len(quantizers) == 3  # input, ReLU output, model output
    global_error = {}
    for kind in AutoObserver.KINDS:
        for q in quantizers:
            q.observer.choose(kind)
            q.start_quantizing()
        global_error[kind] = _output_mse(prepared, net, data[0])
    summary = select_ranges(prepared, data, AutoRangeConfig(samples=256))  # measured on what it is chosen on
    assert sum(summary["chosen"].values()) == 3
    # Against the float nn.Module (not the pass's own float mode): per tensor is at least as good as any flag.
    assert _output_mse(prepared, net, data[0]) <= min(global_error.values()) * 1.001
