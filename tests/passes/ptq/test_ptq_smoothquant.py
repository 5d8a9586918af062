"""SmoothQuant: the float output is unchanged and the linears' inputs lose their outlier channels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.passes import capture_graph
from compress.passes.ptq import SmoothQuantConfig, smooth_quant


class PreLN(nn.Module):
    """LayerNorm feeding only linears (pre-LN transformer block input), with outlier channels in its gain."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k = nn.Linear(d, 16), nn.Linear(d, 16)

    def forward(self, x):
        h = self.ln(x)
        return self.q(h) * self.k(h)


class PostLN(nn.Module):
    """BERT's post-LN: the LayerNorm output feeds a linear and the residual."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        h = self.ln(x)
        return h + self.fc(h)


def _with_outliers(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        net.ln.weight.copy_(torch.rand(net.ln.normalized_shape[0]) + 0.5)
        net.ln.weight[[3, 17]] *= 40  # the LayerNorm outlier channels of BERT / OPT activations
        net.ln.bias.normal_(0, 0.1)
    return net.eval()


def _input_max(gm, layer: str, x) -> np.ndarray:
    seen = []
    handle = gm.get_submodule(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().numpy()))
    with torch.no_grad():
        gm(x)
    handle.remove()
    a = np.abs(np.concatenate(seen)).reshape(-1, seen[0].shape[-1])
    return a.max(0)


def test_smoothquant_folds_into_the_layernorm_and_keeps_the_output():
    net = _with_outliers(PreLN())
    x = torch.randn(64, 10, 32)
    gm, _ = capture_graph(net, x[:1])
    before = _input_max(gm, "q", x)
    summary = smooth_quant(gm, [x], SmoothQuantConfig(alpha=0.5))
    assert [g["into"] for g in summary["groups"]] == ["layernorm ln"]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-4, atol=1e-4)
    after = _input_max(gm, "q", x)
    ratio = lambda m: m.max() / m.mean()  # noqa: E731
    assert ratio(before) > 10 and ratio(after) < ratio(before) / 2.5  # alpha 0.5: outliers to sqrt(x * w)


def test_smoothquant_scale_is_the_alpha_balance_of_activation_and_weight_ranges():
    net = _with_outliers(PreLN())
    x = torch.randn(32, 10, 32)
    gm, _ = capture_graph(net, x[:1])
    x_max = _input_max(gm, "q", x)
    w_max = np.maximum(np.abs(net.q.weight.detach().numpy()).max(0), np.abs(net.k.weight.detach().numpy()).max(0))
    expected = x_max ** 0.5 / w_max ** 0.5
    smooth_quant(gm, [x])
    np.testing.assert_allclose(gm.get_submodule("q").weight.detach().numpy(),
                               net.q.weight.detach().numpy() * expected, rtol=1e-4)


def test_smoothquant_copies_a_layernorm_that_also_feeds_the_residual():
    net = _with_outliers(PostLN())
    x = torch.randn(32, 10, 32)
    gm, _ = capture_graph(net, x[:1])
    summary = smooth_quant(gm, [x])
    assert summary["groups"][0]["into"] == "layernorm copy ln"
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-4, atol=1e-4)
    assert summary["groups"][0]["act_max_over_mean_after"] < summary["groups"][0]["act_max_over_mean_before"] / 2.5
