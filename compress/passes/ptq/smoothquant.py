"""SmoothQuant (Xiao et al., 2023) for transformer linears.

A few input channels of a transformer linear carry values 10-100x the others (LayerNorm outlier channels);
one per-tensor activation scale then leaves the ordinary channels a handful of codes. For input channel ``j``
``x_j * W[:, j] == (x_j / s_j) * (s_j * W[:, j])``, so dividing the activation by
``s_j = max|X_j|^α / max|W[:, j]|^(1-α)`` moves the outliers into the weights, whose grid is per output channel.
The division is folded into what produces the activation: the LayerNorm's affine parameters (a copy of the
LayerNorm when its output also feeds a residual, as in post-LN BERT, so the residual keeps the exact value)
or the output rows of a linear that feeds only linears. Nothing foldable upstream: the group is skipped and
listed with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn

from compress.errors import ConfigError
from compress.passes.prepare import _free_name
from compress.passes.ptq.common import calib_batches, float_mode, require_graph, run
from compress.quant.fake import Quantizer

_PASS_MODULES = (nn.Dropout, nn.Identity, Quantizer)


@dataclass(frozen=True)
class SmoothQuantConfig:
    """Options of :func:`smooth_quant`.

    Args:
        alpha: migration strength: 0 keeps the activations as they are, 1 moves all of their range into the
            weights; 0.5 balances the two (the paper's default for BERT/OPT-sized models).
        samples: calibration samples the activation maxima are measured on.
    """

    alpha: float = 0.5
    samples: int = 256

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {self.alpha}")
        if self.samples < 1:
            raise ConfigError(f"SmoothQuant samples must be ≥ 1, got {self.samples}")


def smooth_quant(model: fx.GraphModule, calib, config: SmoothQuantConfig | None = None) -> dict:
    """Migrate activation outliers of linear inputs into their weights, in place (before calibration).

    Args:
        model: a captured float graph or a prepared graph not yet calibrated.
        calib: calibration data (a Dataset or batches of inputs).
        config: see :class:`SmoothQuantConfig`.

    Returns:
        ``{"groups": [...], "skipped": [...]}``: each smoothed group names its linears, where the scale was
        folded (``into``), and the activation's max / mean ratio over channels of max |x| before and after.

    Example:
        >>> from compress.passes import capture_graph
        >>> net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4)).eval()
        >>> gm, _ = capture_graph(net, torch.randn(2, 8))
        >>> smooth_quant(gm, [torch.randn(16, 8)])["groups"][0]["into"]
        'layernorm 0'
    """
    config = config or SmoothQuantConfig()
    gm = require_graph(model, "SmoothQuant")
    modules = dict(gm.named_modules())
    groups = _groups(gm, modules)
    if not groups:
        return {"groups": [], "skipped": []}
    batches = calib_batches(calib, config.samples)
    amax = _input_absmax(gm, [lin for _, lins in groups for lin in lins], modules, batches)
    done, skipped = [], []
    with torch.no_grad():
        for source, linears in groups:
            names = [n.target for n in linears]
            into = _fold_target(source, linears, modules)
            if into is None:
                skipped.append({"layers": names, "reason": f"the input comes from {source.name}, which has no "
                                "per-channel scale to fold into (only a LayerNorm or a linear can absorb it)"})
                continue
            x_max = amax[linears[0].target]
            w_max = torch.stack([modules[n].weight.detach().abs().amax(0) for n in names]).amax(0)
            s = torch.where((x_max > 0) & (w_max > 0),
                            x_max.clamp(min=1e-12) ** config.alpha / w_max.clamp(min=1e-12) ** (1 - config.alpha),
                            torch.ones_like(x_max)).clamp(1e-5, 1e5)
            where = _fold(gm, source, linears, modules, s, into)
            for n in names:
                modules[n].weight.mul_(s)
            done.append({"layers": names, "into": where,
                         "act_max_over_mean_before": _ratio(x_max), "act_max_over_mean_after": _ratio(x_max / s),
                         "scale_min": float(s.min()), "scale_max": float(s.max())})
    gm.graph.lint()
    gm.recompile()
    return {"groups": done, "skipped": skipped}


def _groups(gm: fx.GraphModule, modules) -> list[tuple[fx.Node, list[fx.Node]]]:
    """(source node, the linear nodes reading its value) for every value some linear reads."""
    by_source: dict[fx.Node, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Linear):
            continue
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        by_source.setdefault(_source(node.args[0], modules), []).append(node)
    return list(by_source.items())


def _passes(node: fx.Node, modules) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], _PASS_MODULES) and \
        bool(node.args) and isinstance(node.args[0], fx.Node)


def _source(node: fx.Node, modules) -> fx.Node:
    while _passes(node, modules):
        node = node.args[0]
    return node


def _consumers(node: fx.Node, modules) -> list[fx.Node]:
    """Every op reading ``node``'s value, through dropout / quantizer nodes."""
    out = []
    for user in node.users:
        out += _consumers(user, modules) if _passes(user, modules) else [user]
    return out


def _fold_target(source: fx.Node, linears: list[fx.Node], modules) -> str | None:
    mod = modules.get(source.target) if source.op == "call_module" else None
    if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine and mod.weight is not None:
        others = [u for u in _consumers(source, modules) if u not in linears]
        return "layernorm_copy" if others else "layernorm"
    if isinstance(mod, nn.Linear) and all(u in linears for u in _consumers(source, modules)):
        shared = sum(1 for n in source.graph.nodes if n.op == "call_module" and n.target == source.target)
        return "linear" if shared == 1 else None
    return None


def _fold(gm: fx.GraphModule, source: fx.Node, linears: list[fx.Node], modules, s: torch.Tensor,
          how: str) -> str:
    if how == "linear":
        prev = modules[source.target]
        prev.weight.div_(s.reshape(-1, 1))
        if prev.bias is not None:
            prev.bias.div_(s)
        return f"linear {source.target}"
    ln = modules[source.target]
    if how == "layernorm_copy":
        # The residual keeps the original LayerNorm; the linears read a copy whose affine parameters are
        # divided by s, with its own activation quantizer (its range is the smoothed one).
        ln = copy.deepcopy(ln)
        name = _free_name(gm, f"{source.target.replace('.', '_')}_smoothed")
        gm.add_submodule(name, ln)
        with gm.graph.inserting_after(source):
            new = gm.graph.call_module(name, source.args, source.kwargs)
        new.meta = dict(source.meta)
        feed = new
        info = getattr(gm, "compress_info", None)
        if info is not None:
            qname = _free_name(gm, f"{name}_act_quant")
            gm.add_submodule(qname, info.config.activation_quantizer())
            with gm.graph.inserting_after(new):
                feed = gm.graph.call_module(qname, (new,))
            feed.meta = dict(source.meta)
        for lin in linears:
            lin.args = (feed, *lin.args[1:])
    ln.weight.div_(s)
    if ln.bias is not None:
        ln.bias.div_(s)
    return f"{how.replace('_', ' ')} {source.target}"


def _input_absmax(gm: fx.GraphModule, linears: list[fx.Node], modules, batches) -> dict[str, torch.Tensor]:
    """max |x| per input feature of each linear, measured on the float function."""
    amax: dict[str, torch.Tensor] = {}
    handles = []
    for node in linears:
        def hook(_mod, args, key=node.target):
            m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            amax[key] = m if key not in amax else torch.maximum(amax[key], m)
        handles.append(modules[node.target].register_forward_pre_hook(hook))
    try:
        with float_mode(gm):
            run(gm, batches)
    finally:
        for h in handles:
            h.remove()
    return amax


def _ratio(channel_max: torch.Tensor) -> float:
    return float(channel_max.max() / channel_max.mean().clamp(min=1e-12))
