"""Structured channel pruning: score each group's channels, choose the kept ones, slice every coupled tensor.

The graph's code is left as it is: every op between the layers reads its sizes from its inputs, and the
groups that reach an op with hard-coded channel sizes (a reshape, a split) are blocked by the analysis
(:mod:`compress.passes.prune.groups`). Only module tensors and their size attributes change, so the pruned
graph module is physically smaller and runs as it did.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from compress.errors import ConfigError
from compress.passes.prune.config import Criterion, PruneConfig
from compress.passes.prune.groups import ChannelGraph, Group, Layout

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d)


# -- importance ---------------------------------------------------------------------------------------------
def _row_norms(weight: torch.Tensor, axis: int, p: int) -> torch.Tensor:
    w = weight.detach().float().movedim(axis, 0).flatten(1)
    return w.abs().sum(1) if p == 1 else w.pow(2).sum(1).sqrt()


def _member_scores(module: nn.Module, role: str, criterion: Criterion) -> torch.Tensor | None:
    """Per-channel scores one member contributes (producers: weight rows; BN: |gamma| with ``bn``)."""
    if criterion is Criterion.BN:
        if role == "norm" and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            return module.weight.detach().float().abs()
        return None
    if role != "out":
        return None
    p = 1 if criterion is Criterion.L1 else 2
    if isinstance(module, nn.Embedding):
        return _row_norms(module.weight, 1, p)
    return _row_norms(module.weight, 1 if isinstance(module, _CONV_T) else 0, p)


def group_scores(gm: fx.GraphModule, graph: ChannelGraph, criterion: Criterion) -> dict[int, torch.Tensor]:
    """Importance of every channel of every group (summed over the group's producers, or its BNs)."""
    modules = dict(gm.named_modules())
    scores = {g.id: torch.zeros(g.size) for g in graph.groups}
    found = {g.id: False for g in graph.groups}
    for crit in (criterion, Criterion.L1):  # BN scale falls back to L1 for groups without a BatchNorm
        for member in graph.members:
            s = _member_scores(modules[member.module], member.role, crit)
            if s is None:
                continue
            offset = 0
            for sid in member.layout.spaces:
                size = graph.spaces[sid].size
                gid = graph.space_group.get(sid)
                if gid is not None and (crit is criterion or not found[gid]):
                    scores[gid] += s[offset:offset + size].cpu()
                    if crit is criterion:
                        found[gid] = True
                offset += size
        if criterion is Criterion.L1:
            break
    return scores


def kept_count(size: int, ratio: float, config: PruneConfig) -> int:
    """Channels a group of ``size`` keeps: ``ceil(size·(1-ratio))`` rounded up to ``round_to``, ≥ 1.

    Example:
        >>> kept_count(64, 0.5, PruneConfig(channels=0.5, round_to=8)), kept_count(20, 0.5, PruneConfig(channels=0.5, round_to=8))
        (32, 16)
    """
    ratio = min(ratio, config.max_sparsity)
    keep = max(1, math.ceil(size * (1.0 - ratio) - 1e-9))
    keep = math.ceil(keep / config.round_to) * config.round_to
    return min(size, keep)


def choose_channels(gm: fx.GraphModule, graph: ChannelGraph, config: PruneConfig) -> dict[int, list[int] | None]:
    """Kept channel indices (sorted) per group; None for groups left whole (blocked, skipped or too small)."""
    scores = group_scores(gm, graph, config.criterion)
    kept: dict[int, list[int] | None] = {}
    for g in graph.groups:
        if g.blocked or skip_reason(g, config):
            kept[g.id] = None
            continue
        n = kept_count(g.size, config.channels or 0.0, config)
        if n >= g.size:
            kept[g.id] = None
            continue
        # Ties (all-zero channels, identical inits) resolve to the lower index: a plan is reproducible.
        order = sorted(range(g.size), key=lambda i: (-float(scores[g.id][i]), i))
        kept[g.id] = sorted(order[:n])
    return kept


def skip_reason(group: Group, config: PruneConfig) -> str | None:
    skipped = [p for p in group.producers if config.skipped(p)]
    return f"skip list: {', '.join(skipped)}" if skipped else None


# -- physical removal ---------------------------------------------------------------------------------------
def _positions(graph: ChannelGraph, layout: Layout, kept: dict[int, list[int] | None]) -> list[int] | None:
    """Kept indices along a member's axis (None when nothing on it changes)."""
    out, offset, changed = [], 0, False
    for sid in layout.spaces:
        size = graph.spaces[sid].size
        gid = graph.space_group.get(sid)
        idx = kept.get(gid) if gid is not None else None
        if idx is None:
            idx = range(size)
        else:
            changed = True
        out.extend(offset + i for i in idx)
        offset += size
    if not changed:
        return None
    if layout.inner > 1:
        out = [c * layout.inner + j for c in out for j in range(layout.inner)]
    return out


def _slice(module: nn.Module, name: str, axis: int, index: torch.Tensor) -> None:
    t = getattr(module, name)
    if t is None:
        return
    new = t.detach().index_select(axis, index.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module.register_buffer(name, new)


def _apply_member(module: nn.Module, role: str, index: torch.Tensor) -> None:
    n = len(index)
    if isinstance(module, nn.Linear):
        if role == "out":
            _slice(module, "weight", 0, index), _slice(module, "bias", 0, index)
            module.out_features = n
        else:
            _slice(module, "weight", 1, index)
            module.in_features = n
    elif isinstance(module, nn.Embedding):
        _slice(module, "weight", 1, index)
        module.embedding_dim = n
    elif isinstance(module, nn.modules.conv._ConvNd):
        transposed = isinstance(module, _CONV_T)
        if role == "dw":
            _slice(module, "weight", 0, index), _slice(module, "bias", 0, index)
            module.in_channels = module.out_channels = module.groups = n
        elif role == "out":
            _slice(module, "weight", 1 if transposed else 0, index), _slice(module, "bias", 0, index)
            module.out_channels = n
        else:
            _slice(module, "weight", 0 if transposed else 1, index)
            module.in_channels = n
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice(module, name, 0, index)
        module.num_features = n
    elif isinstance(module, nn.LayerNorm):
        _slice(module, "weight", 0, index), _slice(module, "bias", 0, index)
        module.normalized_shape = (n,)
    elif isinstance(module, nn.PReLU):
        _slice(module, "weight", 0, index)
        module.num_parameters = n
    else:  # the analysis only records the types above
        raise ConfigError(f"cannot slice {type(module).__name__}; this is a bug in compress, please report it")


def remove_channels(gm: fx.GraphModule, graph: ChannelGraph, kept: dict[int, list[int] | None]) -> None:
    """Slice every member tensor of ``gm`` to the kept channels, in place."""
    modules = dict(gm.named_modules())
    for member in graph.members:
        positions = _positions(graph, member.layout, kept)
        if positions is not None:
            _apply_member(modules[member.module], member.role, torch.tensor(positions, dtype=torch.long))
    gm.recompile()
