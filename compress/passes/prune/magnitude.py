"""Unstructured magnitude masks (per tensor or global) and N:M semi-structured masks.

Both set :mod:`compress.layers.prune` masks; the model keeps its shapes (the zeros make files compress
better, and N:M kernels faster where a runtime has them) until :func:`compress.layers.prune.finalize` bakes
the zeros in. Each function returns one row per tensor for the report: its sparsity, or why it was skipped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.layers.prune import original, prunable_tensors, set_mask
from compress.passes.prune.config import NM, PruneConfig, Scope

_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d)


def _candidates(model: nn.Module, config: PruneConfig) -> tuple[list[tuple[str, nn.Module, str]], dict[str, dict]]:
    rows: dict[str, dict] = {}
    chosen = []
    for path, m, name in prunable_tensors(model):
        key = f"{path}.{name}" if path else name
        numel = getattr(m, name).numel()
        if config.skipped(path):
            rows[key] = {"numel": numel, "sparsity": _zeros(m, name), "skipped": "skip list"}
        elif numel < config.min_numel:
            rows[key] = {"numel": numel, "sparsity": _zeros(m, name), "skipped": f"fewer than {config.min_numel} weights"}
        else:
            chosen.append((path, m, name))
    return chosen, rows


def _zeros(m: nn.Module, name: str) -> float:
    return float((getattr(m, name) == 0).float().mean())


def _keep_largest(weight: torch.Tensor, n_zero: int) -> torch.Tensor:
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_zero > 0:
        # topk on |w| picks an exact count even when many weights tie (already-zero ones tie at 0)
        mask[torch.topk(weight.detach().abs().flatten(), n_zero, largest=False).indices] = False
    return mask.reshape(weight.shape)


def magnitude_masks(model: nn.Module, config: PruneConfig, sparsity: float | None = None) -> dict[str, dict]:
    """Mask the smallest-magnitude weights of ``model`` to ``sparsity`` (default ``config.sparsity``).

    ``config.scope`` LAYER gives every tensor the same sparsity; GLOBAL ranks all weights together (tensors
    with small weights lose more), each tensor capped at ``config.max_sparsity``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
        >>> rows = magnitude_masks(net, PruneConfig(sparsity=0.5))
        >>> [r["sparsity"] for r in rows.values()]
        [0.5, 0.5]
    """
    target = config.sparsity if sparsity is None else sparsity
    chosen, rows = _candidates(model, config)
    if not chosen:
        return rows
    cap = config.max_sparsity
    if config.scope is Scope.GLOBAL:
        magnitudes = torch.cat([getattr(m, n).detach().abs().flatten().cpu() for _, m, n in chosen])
        k = int(math.floor(target * magnitudes.numel()))
        threshold = torch.kthvalue(magnitudes, k).values if k > 0 else torch.tensor(-1.0)
        counts = [int((getattr(m, n).detach().abs().cpu() <= threshold).sum()) for _, m, n in chosen]
        # ties at the threshold could overshoot the total; the global count k is what the user asked for
        excess = sum(counts) - k
        counts = [c - min(c, excess) if i == len(counts) - 1 else c for i, c in enumerate(counts)]
    else:
        counts = [int(math.floor(target * getattr(m, n).numel())) for _, m, n in chosen]
    for (path, m, name), count in zip(chosen, counts, strict=True):
        numel = getattr(m, name).numel()
        count = min(count, int(math.floor(cap * numel)))
        set_mask(m, name, _keep_largest(original(m, name), count))
        rows[f"{path}.{name}" if path else name] = {"numel": numel, "sparsity": _zeros(m, name)}
    order = list(_order(model))
    return dict(sorted(rows.items(), key=lambda kv: order.index(kv[0])))


def _order(model: nn.Module):
    for path, _, name in prunable_tensors(model):
        yield f"{path}.{name}" if path else name


def input_axis(module: nn.Module) -> int:
    """The axis of a weight that indexes input channels (0 for transposed convolutions, else 1)."""
    return 0 if isinstance(module, _CONV_T) else 1


def nm_mask(weight: torch.Tensor, nm: NM, axis: int = 1) -> torch.Tensor:
    """Keep the ``M - N`` largest of every ``M`` consecutive weights along ``axis`` (input channels).

    Example:
        >>> w = torch.tensor([[4.0, -1.0, 0.5, 3.0, 1.0, 2.0, -5.0, 0.1]])
        >>> nm_mask(w, NM(2, 4)).int().tolist()
        [[1, 0, 0, 1, 0, 1, 1, 0]]
    """
    w = weight.detach().abs().movedim(axis, -1)
    shape = w.shape
    groups = w.reshape(*shape[:-1], shape[-1] // nm.m, nm.m)
    drop = torch.topk(groups, nm.n, dim=-1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
    return mask.reshape(shape).movedim(-1, axis)


def nm_masks(model: nn.Module, config: PruneConfig) -> dict[str, dict]:
    """N:M masks on every prunable weight whose input-channel count divides by M; the others are reported."""
    chosen, rows = _candidates(model, config)
    nm = config.nm
    for path, m, name in chosen:
        key = f"{path}.{name}" if path else name
        w = original(m, name)
        if isinstance(m, nn.Embedding):
            rows[key] = {"numel": w.numel(), "sparsity": _zeros(m, name),
                         "skipped": "a lookup table has no input-channel axis"}
            continue
        axis = input_axis(m)
        if w.shape[axis] % nm.m:
            rows[key] = {"numel": w.numel(), "sparsity": _zeros(m, name),
                         "skipped": f"{w.shape[axis]} input channels is not a multiple of {nm.m}"}
            continue
        set_mask(m, name, nm_mask(w, nm, axis))
        rows[key] = {"numel": w.numel(), "sparsity": _zeros(m, name), "pattern": str(nm)}
    order = list(_order(model))
    return dict(sorted(rows.items(), key=lambda kv: order.index(kv[0])))
