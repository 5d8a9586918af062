"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019).

For two layers in a row with a positively homogeneous activation between them, ``relu(x / s) * s == relu(x)``
for ``s > 0``: dividing output channel ``i`` of the first layer (weights and bias) by ``s_i`` and multiplying
input channel ``i`` of the second by ``s_i`` leaves the function unchanged. With
``s_i = sqrt(r1_i / r2_i)`` (``r1_i`` the range of the first layer's output channel, ``r2_i`` of the second's
input channel) both ranges become ``sqrt(r1_i * r2_i)``: no channel is left with a few codes of a tensor-wide
weight grid, and the activation between the layers no longer has a few channels that dwarf the rest.
It matters most for depthwise nets, where BatchNorm folding leaves per-channel ranges spread over decades.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.errors import ConfigError
from compress.layers.conv import QuantConvBn2d
from compress.passes.ptq.common import in_channel_absmax, is_depthwise, out_channel_absmax, require_graph
from compress.quant.fake import Quantizer

_RELU = (torch.relu, torch.relu_, F.relu)
_RELU6 = (F.relu6,)
_PASS_MODULES = (nn.Dropout, nn.Identity, Quantizer)


@dataclass(frozen=True)
class CLEConfig:
    """Options of :func:`cross_layer_equalize`.

    Args:
        sweeps: passes over all pairs; a chain of layers (conv → dw conv → conv) converges over a few.
        through_relu6: equalize across ReLU6 as DFQ does for MobileNet-style nets. Exact for ReLU; across ReLU6
            the clamp moves from 6 to ``6 * s_i`` for channel ``i`` (values beyond the old clamp pass through),
            which the DFQ paper found harmless; set False to keep the float function bit-for-bit.
        max_scale: bound on ``s_i`` and ``1 / s_i`` (a dead channel must not blow up its neighbour).
    """

    sweeps: int = 4
    through_relu6: bool = True
    max_scale: float = 1e4

    def __post_init__(self):
        if self.sweeps < 1:
            raise ConfigError(f"CLE sweeps must be ≥ 1, got {self.sweeps}")
        if self.max_scale <= 1:
            raise ConfigError(f"CLE max_scale must be > 1, got {self.max_scale}")


def cross_layer_equalize(model: fx.GraphModule, config: CLEConfig | None = None) -> dict:
    """Equalize the per-channel weight ranges of consecutive conv / linear layers in place.

    Runs on a captured float graph (BatchNorm is folded first) or on a prepared graph before calibration
    (prepare has folded BatchNorm; the weight quantizers follow the new weights).

    Returns:
        A summary: ``pairs`` (``[first, second]`` paths), ``spread_before`` / ``spread_after`` (median over pairs
        of max/min of the first layer's per-channel ranges) and the range of the scales applied.

    Example:
        >>> from compress.passes import capture_graph
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        >>> gm, _ = capture_graph(net, torch.randn(1, 3, 8, 8))
        >>> cross_layer_equalize(gm)["pairs"]
        [['0', '2']]
    """
    config = config or CLEConfig()
    gm = require_graph(model, "cross-layer equalization")
    if any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in gm.modules()):
        from compress.passes.prepare import _fold_batchnorm
        from compress.quant.config import QuantConfig

        _fold_batchnorm(gm, QuantConfig(), False, ())  # the ranges that matter are the folded conv's
        gm.recompile()
    pairs = find_pairs(gm, config)
    modules = dict(gm.named_modules())
    before = [_spread(out_channel_absmax(modules[a].weight)) for a, _ in pairs]
    lo, hi = float("inf"), 0.0
    with torch.no_grad():
        for _ in range(config.sweeps):
            for a, b in pairs:
                s = _equalize_pair(modules[a], modules[b], config.max_scale)
                lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    after = [_spread(out_channel_absmax(modules[a].weight)) for a, _ in pairs]
    return {"pairs": [[a, b] for a, b in pairs],
            "spread_before": _median(before), "spread_after": _median(after),
            "scale_min": lo if pairs else None, "scale_max": hi if pairs else None}


def find_pairs(gm: fx.GraphModule, config: CLEConfig) -> list[tuple[str, str]]:
    """(first, second) module paths of equalizable layer pairs, in graph order."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        second = _layer(node, modules)
        if second is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        while _passes_through(prev, modules, config) and len(prev.users) == 1:
            prev = prev.args[0]
        first = _layer(prev, modules)
        if first is None or len(prev.users) != 1 or calls[prev.target] > 1 or calls[node.target] > 1:
            continue
        if isinstance(first, nn.Linear) != isinstance(second, nn.Linear):
            continue  # a conv's channels are not a linear's features without a reshape in between
        if _out_channels(first) != _in_channels(second) or _groups_block(first, second):
            continue
        pairs.append((prev.target, node.target))
    return pairs


def _layer(node, modules) -> nn.Module | None:
    mod = modules.get(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None
    if isinstance(mod, QuantConvBn2d) or not isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Linear):
        return None
    return mod


def _passes_through(node: fx.Node, modules, config: CLEConfig) -> bool:
    """Ops that commute with a positive per-channel scale: ReLU (ReLU6 when allowed), dropout in eval,
    quantizers that have not observed yet, zero padding."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.ReLU) or (config.through_relu6 and isinstance(mod, nn.ReLU6)):
            return True
        return isinstance(mod, _PASS_MODULES)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    if node.op != "call_function":
        return False
    if node.target in _RELU or (config.through_relu6 and node.target in _RELU6):
        return True
    if node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and not value
    return False


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _groups_block(first: nn.Module, second: nn.Module) -> bool:
    """Grouped (not depthwise) convs mix channels within groups only: their scales do not line up simply."""
    return any(getattr(m, "groups", 1) > 1 and not is_depthwise(m) for m in (first, second))


def _equalize_pair(first: nn.Module, second: nn.Module, max_scale: float) -> torch.Tensor:
    r1 = out_channel_absmax(first.weight)
    r2 = in_channel_absmax(second.weight, depthwise=is_depthwise(second))
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-30)), torch.ones_like(r1))
    s = s.clamp(1 / max_scale, max_scale)
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(s.reshape(shape))
    if first.bias is not None:
        first.bias.div_(s)
    if is_depthwise(second):
        second.weight.mul_(s.reshape((-1,) + (1,) * (second.weight.dim() - 1)))
    else:
        second.weight.mul_(s.reshape((1, -1) + (1,) * (second.weight.dim() - 2)))
    return s


def _spread(ranges: torch.Tensor) -> float:
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.numel() else 1.0


def _median(values: list[float]) -> float | None:
    return float(torch.tensor(values).median()) if values else None
