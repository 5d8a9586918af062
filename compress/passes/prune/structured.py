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
from compress.passes.prune.recurrent import _RNN, hidden_scores, slice_rnn

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
    p = 1 if criterion is Criterion.L1 else 2
    if role == "hidden":
        return hidden_scores(module, p)
    if role != "out":
        return None
    if isinstance(module, nn.Embedding):
        return _row_norms(module.weight, 1, p)
    return _row_norms(module.weight, 1 if isinstance(module, _CONV_T) else 0, p)


def _split_by_group(graph: ChannelGraph, layout: Layout, values: torch.Tensor, into: dict[int, torch.Tensor]) -> None:
    """Add per-column ``values`` of a member (its layout's channels × ``inner``) to the groups' channels."""
    per_channel = values.reshape(-1, layout.inner).sum(1)
    offset = 0
    for sid in layout.spaces:
        size = graph.spaces[sid].size
        gid = graph.space_group.get(sid)
        if gid is not None:
            into[gid] += per_channel[offset:offset + size]
        offset += size


def taylor_scores(gm: fx.GraphModule, graph: ChannelGraph, data, max_batches: int) -> dict[int, torch.Tensor]:
    """First-order Taylor importance: per batch, |Σ w·∂L/∂w| over the weight columns that read a channel.

    Zeroing every consumer's input columns of channel c removes c's influence exactly, so by first-order
    Taylor the loss changes by -Σ w·g over those columns; the magnitude of that sum, accumulated over
    ``max_batches`` labelled batches (cross-entropy), is the channel's score.
    """
    from compress.passes.qat import _labelled_batches

    modules = dict(gm.named_modules())
    readers = [m for m in graph.members if m.role == "in"]
    scores = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in graph.groups}
    params = [p for p in gm.parameters()]
    flags = [p.requires_grad for p in params]
    seen = 0
    try:
        for p in params:
            p.requires_grad_(True)
        for inputs, y in _labelled_batches(data, 32, 0):
            if seen >= max_batches:
                break
            gm.zero_grad(set_to_none=True)
            out = gm(*inputs)
            out = out[0] if isinstance(out, tuple | list) else out
            if out.dim() == 3 and y.dim() == 2 and out.shape[:2] == y.shape:
                out = out.movedim(-1, 1)  # [N, T, classes] → cross_entropy's [N, classes, T]
            torch.nn.functional.cross_entropy(out, y).backward()
            batch = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in graph.groups}
            for member in readers:
                module = modules[member.module]
                w = module.weight_ih_l0 if isinstance(module, _RNN) else module.weight
                if w.grad is None:
                    continue
                axis = 0 if isinstance(module, _CONV_T) else 1
                wg = (w.detach() * w.grad).double().movedim(axis, 0).flatten(1).sum(1)
                _split_by_group(graph, member.layout, wg, batch)
            for gid, t in batch.items():
                scores[gid] += t.abs()
            seen += 1
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(flag)
    if seen == 0:
        raise ConfigError("criterion taylor needs labelled batches: pass data=[(x, y), ...] to prune() "
                          "(the CLI: --train or --eval DATA with labels)")
    return {gid: t.float() for gid, t in scores.items()}


def group_scores(gm: fx.GraphModule, graph: ChannelGraph, criterion: Criterion, data=None,
                 max_batches: int = 8) -> dict[int, torch.Tensor]:
    """Importance of every channel of every group (summed over the group's producers, its BNs, or with
    ``taylor`` over the weights that read it, from ``data``)."""
    if criterion is Criterion.TAYLOR:
        if data is None:
            raise ConfigError("criterion taylor needs labelled batches: pass data=[(x, y), ...] to prune() "
                              "(the CLI: --train or --eval DATA with labels)")
        return taylor_scores(gm, graph, data, max_batches)
    modules = dict(gm.named_modules())
    scores = {g.id: torch.zeros(g.size) for g in graph.groups}
    found = {g.id: False for g in graph.groups}
    for crit in (criterion, Criterion.L1):  # BN scale falls back to L1 for groups without a BatchNorm
        for member in graph.members:
            s = _member_scores(modules[member.module], member.role, crit)
            if s is None:
                continue
            add = {g.id: torch.zeros(g.size) for g in graph.groups}
            _split_by_group(graph, member.layout, s.cpu().float(), add)  # a head's D rows count as one
            for gid in {graph.space_group[sid] for sid in member.layout.spaces if sid in graph.space_group}:
                if crit is criterion or not found[gid]:
                    scores[gid] += add[gid]
            if crit is criterion:
                found.update({graph.space_group[sid]: True for sid in member.layout.spaces
                              if sid in graph.space_group})
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


def choose_channels(gm: fx.GraphModule, graph: ChannelGraph, config: PruneConfig, scores=None,
                    ratios: dict[int, float] | None = None) -> dict[int, list[int] | None]:
    """Kept channel indices (sorted) per group; None for groups left whole (blocked, skipped or too small).

    ``ratios`` (group id → fraction removed) overrides ``config.channels`` per group (latency mode);
    ``scores`` are :func:`group_scores` when the caller has them already.
    """
    scores = group_scores(gm, graph, config.criterion) if scores is None else scores
    kept: dict[int, list[int] | None] = {}
    for g in graph.groups:
        if g.blocked or skip_reason(g, config):
            kept[g.id] = None
            continue
        n = kept_count(g.size, (ratios or {}).get(g.id, config.channels or 0.0), config)
        kept[g.id] = None if n >= g.size else ranked(scores[g.id], n)
    return kept


def ranked(scores: torch.Tensor, n: int) -> list[int]:
    """The ``n`` highest-scoring channel indices, sorted; ties (all-zero channels, identical inits) resolve to
    the lower index, so a plan is reproducible."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n])


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
    elif isinstance(module, _RNN):
        slice_rnn(module, role, index, _slice)
    else:  # the analysis only records the types above
        raise ConfigError(f"cannot slice {type(module).__name__}; this is a bug in compress, please report it")


def remove_channels(gm: fx.GraphModule, graph: ChannelGraph, kept: dict[int, list[int] | None]) -> None:
    """Slice every member tensor of ``gm`` to the kept channels and rewrite the literal sizes that count them
    (``num_heads`` in a view), in place."""
    modules = dict(gm.named_modules())
    for member in graph.members:
        positions = _positions(graph, member.layout, kept)
        if positions is not None:
            _apply_member(modules[member.module], member.role, torch.tensor(positions, dtype=torch.long))
    nodes = {n.name: n for n in gm.graph.nodes}
    for edit in graph.edits:
        idx = kept.get(graph.space_group.get(edit.space))
        if idx is None:
            continue
        node, args = nodes[edit.node], list(nodes[edit.node].args)
        if edit.pos is None:
            args[edit.arg] = len(idx) * edit.unit
        else:
            sizes = list(args[edit.arg])
            sizes[edit.pos] = len(idx) * edit.unit
            args[edit.arg] = type(node.args[edit.arg])(sizes)
        node.args = tuple(args)
    gm.recompile()
