"""Figures for a pruning report: parameters, MACs, sparsity, sizes on disk (raw and gzip), accuracy."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.layers.prune import sparsity


def _as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)


def disk_sizes(path: str | Path) -> dict[str, int]:
    """A file's size on disk and gzip-compressed (level 9): what zeros buy in a download or a flash image."""
    return _sizes(Path(path).read_bytes())


def _sizes(data: bytes) -> dict[str, int]:
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0))}


def state_dict_sizes(model: nn.Module) -> dict[str, int]:
    """Size of ``torch.save(model.state_dict())``, raw and gzip-compressed."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return _sizes(buf.getvalue())


def count_params(model: nn.Module) -> int:
    """Parameters, counting shared ones once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters (what unstructured pruning reduces while the shapes stay)."""
    return sum(int((p != 0).sum()) for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of conv / linear layers for one sample (the batch's total / batch size)."""
    example_inputs = _as_tuple(example_inputs)
    total = [0]

    def hook(mod, _inp, out):
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            total[0] += _inp[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.modules.conv._ConvNd):
            total[0] += out.numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    first = example_inputs[0] if example_inputs else None
    batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
    return total[0] // max(batch, 1)


def accuracy(model: nn.Module, data, batch_size: int = 256) -> float | None:
    """Top-1 accuracy of a classifier on a labelled :class:`compress.io.Dataset` (None without labels)."""
    if getattr(data, "y", None) is None:
        return None
    model.eval()
    hits = 0
    with torch.no_grad():
        for x, y in data.batches(batch_size):
            out = model(*(x if isinstance(x, tuple) else (x,)))
            out = out[0] if isinstance(out, tuple | list) else out
            if out.dim() != 2:
                return None  # not a classifier: no accuracy to report
            hits += int((out.argmax(-1).cpu() == y.cpu()).sum())
    return hits / len(data)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Zeros per prunable tensor (after finalize the zeros are in the weights)."""
    return {k: round(v, 6) for k, v in sparsity(model).items()}


def ratio(after: float, before: float) -> float | None:
    return None if not before else float(np.float64(after) / before)
