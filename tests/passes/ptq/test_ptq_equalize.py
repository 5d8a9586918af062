"""Cross-layer equalization: the float function is unchanged and each pair's per-channel ranges meet."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.passes import capture_graph
from compress.passes.ptq import CLEConfig, cross_layer_equalize


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    # Spread BatchNorm gains over two decades: the per-channel ranges DFQ found in MobileNet after folding.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(10 ** (torch.rand(m.num_features, generator=g) * 2 - 1))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def _depthwise_net() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 5)))


def _absmax(w: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, 0)
    return moved.reshape(moved.shape[0], -1).max(1)


def test_cle_keeps_the_float_function_of_a_depthwise_net():
    net = _depthwise_net()
    x = torch.randn(8, 3, 8, 8)
    gm, _ = capture_graph(net, x[:1])
    summary = cross_layer_equalize(gm)
    assert summary["pairs"] == [["0", "3"], ["3", "6"], ["9", "11"]]  # conv→dw, dw→pw, linear→linear
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-4, atol=1e-5)
    assert summary["spread_after"] < summary["spread_before"] / 3


def test_cle_meets_ranges_of_a_pair_at_their_geometric_mean():
    torch.manual_seed(1)
    net = _randomize(nn.Sequential(nn.Conv2d(4, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 6, 1)))
    gm, _ = capture_graph(net, torch.randn(1, 4, 6, 6))
    # Reference: fold BN in numpy, then the ranges DFQ predicts, sqrt(r1 * r2) per channel.
    bn = net[1]
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    w1 = net[0].weight.detach().numpy() * factor[:, None, None, None]
    w2 = net[3].weight.detach().numpy()
    expected = np.sqrt(_absmax(w1, 0) * _absmax(w2, 1))
    cross_layer_equalize(gm, CLEConfig(sweeps=1))
    first, second = gm.get_submodule("0").weight.detach().numpy(), gm.get_submodule("3").weight.detach().numpy()
    np.testing.assert_allclose(_absmax(first, 0), expected, rtol=1e-5)
    np.testing.assert_allclose(_absmax(second, 1), expected, rtol=1e-5)


def test_cle_leaves_relu6_pairs_alone_when_asked_to_stay_exact():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    gm, _ = capture_graph(net, torch.randn(1, 3, 8, 8))
    assert cross_layer_equalize(gm, CLEConfig(through_relu6=False))["pairs"] == []
    gm, _ = capture_graph(net, torch.randn(1, 3, 8, 8))
    assert cross_layer_equalize(gm)["pairs"] == [["0", "2"]]


def test_cle_skips_a_layer_whose_output_branches():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(y) + self.c(y)  # scaling a's channels cannot be undone in both b and c and the add

    net = Branchy().eval()
    gm, _ = capture_graph(net, torch.randn(1, 3, 4, 4))
    assert cross_layer_equalize(gm)["pairs"] == []
