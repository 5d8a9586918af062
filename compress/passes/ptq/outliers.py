"""Outlier channels of transformer LayerNorm / GELU outputs: found on the calibration data, migrated when exact.

Trained BERT-family encoders have a few LayerNorm output channels whose magnitudes are 10-100x the others
(systematic outliers from a few large LayerNorm gain / bias entries). One per-tensor int8 grid then spends
its 256 codes on those channels and leaves every other channel a handful of codes.

Detection: the float graph runs on the calibration samples and every LayerNorm and GELU output records
``max |x_c|`` per channel (the last axis). A channel is an outlier when its maximum exceeds
``k × median over channels`` (:attr:`OutlierConfig.k`).

Handling: for a LayerNorm read only by linears, ``gamma_c · n_c + beta_c == s_c · (gamma_c / s_c · n_c +
beta_c / s_c)``, and the factor ``s_c`` goes into input column ``c`` of every reading linear:
``W[:, c] · x_c == (s_c · W[:, c]) · (x_c / s_c)``. The float function is unchanged; the LayerNorm output
loses its outliers and the weights, whose grid is per output channel, take them. ``s_c`` balances the two
ranges: ``sqrt((a_c / a_ref) / (w_c / w_ref))`` with ``a_ref`` / ``w_ref`` the largest ordinary channel's
activation maximum / weight-column maximum, clamped to ``[1, a_c / a_ref]`` (never below the ordinary
channels). An outlier channel whose weight column is already small (weights that compensate the large gain)
is brought all the way down to the ordinary channels.

When something besides linears reads the LayerNorm output (the residual add of post-LN BERT: a scale cannot
be undone inside an add that feeds the next LayerNorm's statistics), the linears get a copy of the LayerNorm
to migrate into (:attr:`OutlierConfig.copy`, SmoothQuant's copy) and the residual keeps the original, with its
outliers. Blocked, with the reason in the report: a LayerNorm without affine parameters, indexing between a
LayerNorm with other readers and its linears, weights shared with calls outside the group, and every GELU
(no per-channel scale passes through it; its outliers are reported only).

Softmax outputs need no pass: the op registry gives them the fixed [0, 1) grid (scale 1/256, zero point
-128 in int8) that TFLite's int8 SOFTMAX requires.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from compress.errors import ConfigError
from compress.passes import graph as g
from compress.passes.ptq.common import calib_batches, float_mode, require_graph
from compress.passes.ptq.smoothquant import _fold
from compress.quant.fake import Quantizer

#: Ops whose per-channel statistics are measured (registry names).
WATCHED = ("layer_norm", "gelu")
_PASS_MODULES = (nn.Dropout, nn.Identity, Quantizer)
_PASS_METHODS = ("contiguous", "clone", "detach")


@dataclass(frozen=True)
class OutlierConfig:
    """Options of :func:`suppress_outliers`.

    Args:
        k: a channel is an outlier when its ``max |x|`` over the calibration samples exceeds ``k`` times the
            median over channels. Trained LayerNorm / GELU outputs without outliers spread up to ~3x (the zoo
            BERT: 1.3-1.5x for LayerNorm, 2.6x for GELU); the systematic outliers of BERT-family checkpoints
            are 10-100x, so 6 separates the two.
        samples: calibration samples the ranges are measured on.
        migrate: apply the exact LayerNorm → linear migration (False: detect and report only).
        copy: when something besides linears reads a LayerNorm's output (post-LN BERT's residual add), give
            the linears a copy of the LayerNorm to migrate into; the residual keeps the original and its
            outliers. False reports such a LayerNorm as blocked.
        max_scale: bound on each channel's factor.

    Example:
        >>> OutlierConfig(k=1)
        Traceback (most recent call last):
        ...
        compress.errors.ConfigError: outlier threshold k must be > 1 (a multiple of the median channel range), got 1
    """

    k: float = 6.0
    samples: int = 256
    migrate: bool = True
    copy: bool = True
    max_scale: float = 1e3

    def __post_init__(self):
        if not self.k > 1:
            raise ConfigError(f"outlier threshold k must be > 1 (a multiple of the median channel range), got {self.k}")
        if self.samples < 1:
            raise ConfigError(f"outlier samples must be ≥ 1, got {self.samples}")
        if not self.max_scale > 1:
            raise ConfigError(f"outlier max_scale must be > 1, got {self.max_scale}")


def watched_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The LayerNorm and GELU nodes of ``gm`` (what :func:`suppress_outliers` measures), in graph order."""
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        spec = g.spec_of(node, modules) if node.op in ("call_module", "call_function", "call_method") else None
        if spec is not None and spec.name in WATCHED:
            out.append(node)
    return out


def suppress_outliers(model: fx.GraphModule, calib, config: OutlierConfig | None = None) -> dict:
    """Find outlier channels of LayerNorm / GELU outputs and migrate the LayerNorm ones into the linears.

    Runs before calibration, in place, on a captured float graph or a prepared graph.

    Args:
        model: the graph (``compress.passes.prepare`` / ``capture_graph``).
        calib: calibration data (a Dataset or batches of inputs).
        config: see :class:`OutlierConfig`.

    Returns:
        ``{"k": ..., "sites": [...]}``: one entry per LayerNorm / GELU output with outlier channels: ``op``
        (node), ``kind``, ``module``, ``channels``, ``outliers`` (how many), ``indices``, ``ratio`` (max over
        median channel range), and ``action``: ``"migrated"`` (with ``into``, ``copy``: whether the linears
        read a copy of the LayerNorm, ``ratio_after``, ``scale_max``)
        or ``"blocked"`` / ``"detected"`` (with ``reason``).

    Example:
        >>> from compress.passes import capture_graph
        >>> net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4)).eval()
        >>> with torch.no_grad():
        ...     net[0].weight[2] = 50.0
        >>> gm, _ = capture_graph(net, torch.randn(2, 8))
        >>> site = suppress_outliers(gm, [torch.randn(64, 8)])["sites"][0]
        >>> site["action"], site["outliers"], site["into"]
        ('migrated', 1, ['1'])
    """
    config = config or OutlierConfig()
    gm = require_graph(model, "outlier suppression")
    nodes = watched_nodes(gm)
    if not nodes:
        return {"k": config.k, "sites": []}
    ranks: dict[fx.Node, int] = {}
    ranges = channel_ranges(gm, nodes, calib_batches(calib, config.samples), ranks)
    modules = dict(gm.named_modules())
    sites, changed = [], False
    with torch.no_grad():
        for node in nodes:
            amax = ranges.get(node)
            if amax is None or amax.numel() < 2:
                continue
            median = float(amax.median())
            mask = amax > config.k * max(median, 1e-12)
            if not bool(mask.any()):
                continue
            kind = g.spec_of(node, modules).name
            site = {"op": node.name, "kind": kind,
                    "module": node.target if node.op == "call_module" else None,
                    "channels": int(amax.numel()), "outliers": int(mask.sum()),
                    "indices": [int(i) for i in mask.nonzero().flatten()[:16]],
                    "ratio": float(amax.max()) / max(median, 1e-12)}
            if not config.migrate:
                site |= {"action": "detected", "reason": "migration off (OutlierConfig.migrate=False)"}
            else:
                linears, copied, reason = _migration_group(gm, node, modules, ranks, config.copy)
                if reason is not None:
                    site |= {"action": "blocked", "reason": reason}
                else:
                    s = _scales(amax, mask, linears, config.max_scale)
                    if copied:
                        # smoothquant's home for it: a copy of the LayerNorm (with its own activation
                        # quantizer) feeds the linears, the residual keeps the original and its outliers.
                        quantized = any(g.is_quantizer(u, modules) for u in node.users)
                        _fold(gm, node, linears, modules, s, "layernorm_copy")
                        if not quantized:
                            _unquantize_input(gm, linears[0])
                        modules, changed = dict(gm.named_modules()), True
                    else:
                        _migrate(modules[node.target], s)
                    for lin in linears:
                        modules[lin.target].weight.mul_(s)
                    after = amax / s
                    site |= {"action": "migrated", "copy": copied, "into": [lin.target for lin in linears],
                             "ratio_after": float(after.max() / after.median().clamp(min=1e-12)),
                             "scale_max": float(s.max())}
            sites.append(site)
    if changed:
        gm.graph.lint()
        gm.recompile()
    return {"k": config.k, "sites": sites}


def channel_ranges(gm: fx.GraphModule, nodes: list[fx.Node], batches,
                   ranks: dict[fx.Node, int] | None = None) -> dict[fx.Node, torch.Tensor]:
    """``max |x|`` per channel (last axis) of each of ``nodes``' outputs, on the float function; ``ranks``,
    when given, receives every tensor-valued node's rank (a captured graph carries no shapes)."""
    wanted = set(nodes)
    ranks = {} if ranks is None else ranks
    ranges: dict[fx.Node, torch.Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                ranks[n] = out.dim()
            if n in wanted and isinstance(out, torch.Tensor) and out.dim() >= 1 and out.is_floating_point():
                m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).float()
                ranges[n] = m if n not in ranges else torch.maximum(ranges[n], m)
            return out

    with float_mode(gm), torch.no_grad():
        for inputs in batches:
            _Recorder(gm).run(*inputs)
    return ranges


def _keeps_last_axis(node: fx.Node, modules, ranks: dict[fx.Node, int]) -> bool:
    """Ops that pass a value on with its last axis (the channels) untouched: dropout in eval, quantizers not
    yet calibrated, copies, and indexing that does not touch the last axis (BERT's pooler: ``h[:, 0]``)."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_MODULES)
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        ndim = ranks.get(node.args[0])
        simple = all(isinstance(i, int | slice) for i in index)
        return simple and ndim is not None and len(index) < ndim
    return False


def _migration_group(gm: fx.GraphModule, node: fx.Node, modules, ranks,
                     copy: bool) -> tuple[list[fx.Node], bool, str | None]:
    """(the linear nodes reading ``node``'s value, whether they need a copy of the LayerNorm, None) when the
    migration is exact, else ([], False, why not)."""
    if node.op != "call_module" or not isinstance(modules[node.target], nn.LayerNorm):
        what = "GELU" if g.spec_of(node, modules).name == "gelu" else "a functional layer_norm"
        return [], False, f"no per-channel scale passes through {what}; the outliers stay in its int8 grid"
    ln = modules[node.target]
    if not ln.elementwise_affine or ln.weight is None or len(ln.normalized_shape) != 1:
        return [], False, "the LayerNorm has no per-channel affine parameters to divide"
    linears, others, direct = [], [], True
    pending = [(u, True) for u in node.users]
    while pending:
        user, plain = pending.pop()
        if _keeps_last_axis(user, modules, ranks):
            # Only dropout / identity / quantizers may stand between a copy and the linears it feeds.
            keep = plain and user.op == "call_module" and isinstance(modules[user.target], _PASS_MODULES)
            pending.extend((u, keep) for u in user.users)
            continue
        mod = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(mod, nn.Linear):
            linears.append(user)
            direct = direct and plain
        else:
            others.append(user)
    if not linears:
        return [], False, "no linear reads the LayerNorm output"
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    linears.sort(key=order.__getitem__)
    if reason := _shared(gm, node, linears, modules):
        return [], False, reason
    if others:
        first = min(others, key=order.__getitem__)
        label = "the model output" if first.op == "output" else f"{first.name} ({g.node_label(first, modules)})"
        why = (f"{label} also reads the LayerNorm output (a residual branch or a non-linear consumer): the scale "
               "cannot be folded into it")
        if not copy:
            return [], False, why + "; OutlierConfig(copy=True) gives the linears a copy of the LayerNorm"
        if not direct:
            return [], False, why + ", and indexing between it and a linear leaves no place for a copy"
        return linears, True, None
    return linears, False, None


def _shared(gm: fx.GraphModule, node: fx.Node, linears: list[fx.Node], modules) -> str | None:
    """Why the parameters cannot change: another call (a shared module's per-call copy) holds them."""
    group = {node, *linears}
    mine = {id(modules[n.target].weight): n for n in group}
    for other in gm.graph.nodes:
        if other in group or other.op != "call_module":
            continue
        w = getattr(modules[other.target], "weight", None)
        if w is not None and id(w) in mine:
            return f"{mine[id(w)].target} shares its weights with {other.target}, which reads another input"
    return None


def _scales(amax: torch.Tensor, mask: torch.Tensor, linears: list[fx.Node], max_scale: float) -> torch.Tensor:
    """Per-channel factors: 1 for ordinary channels; for outliers, the balance of activation and weight-column
    range relative to the largest ordinary channel, between 1 and bringing the channel down to it."""
    owner = linears[0].graph.owning_module
    w = torch.stack([owner.get_submodule(n.target).weight.detach().abs().amax(0) for n in linears]).amax(0)
    a_ref = amax[~mask].max().clamp(min=1e-12)
    w_ref = w[~mask].max().clamp(min=1e-12) if bool((~mask).any()) else w.max()
    full = amax / a_ref
    balance = torch.sqrt(full / (w / w_ref).clamp(min=1e-12))
    s = torch.minimum(balance, full).clamp(1.0, max_scale)
    return torch.where(mask, s, torch.ones_like(s))


def _unquantize_input(gm: fx.GraphModule, linear: fx.Node) -> None:
    """Remove the activation quantizer the copy was given when the original's output had none (dynamic or
    weight-only linears read it in float; a calibrated grid there would quantize what the model does not)."""
    feed = linear.args[0]
    if feed.op == "call_module" and isinstance(gm.get_submodule(feed.target), Quantizer):
        feed.replace_all_uses_with(feed.args[0])
        gm.graph.erase_node(feed)
        gm.delete_submodule(feed.target)


def _migrate(ln: nn.LayerNorm, s: torch.Tensor) -> None:
    ln.weight.div_(s)
    if ln.bias is not None:
        ln.bias.div_(s)


def render_outliers(section: dict) -> str:
    """The report's ``outliers`` section as a plain-text table (the CLI prints it).

    Example:
        >>> print(render_outliers({"k": 6.0, "sites": [{"op": "ln", "kind": "layer_norm", "channels": 64,
        ...     "outliers": 3, "ratio": 52.1, "action": "migrated", "ratio_after": 1.4, "into": ["fc"]}]}))
        outlier channels (max |x| > 6 x median channel):
          op  kind        channels  ratio  action
          ln  layer_norm  3 of 64   52.1x  migrated into fc (ratio 1.4x after)
    """
    rows = [("op", "kind", "channels", "ratio", "action")]
    for s in section["sites"]:
        if s["action"] == "migrated":
            via = " via a LayerNorm copy (the residual keeps the original)" if s.get("copy") else ""
            action = f"migrated into {', '.join(s['into'])}{via} (ratio {s['ratio_after']:.1f}x after)"
        else:
            action = f"{s['action']}: {s['reason']}"
        rows.append((s["op"], s["kind"], f"{s['outliers']} of {s['channels']}", f"{s['ratio']:.1f}x", action))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"outlier channels (max |x| > {section['k']:g} x median channel):"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    return "\n".join(line.rstrip() for line in lines)
