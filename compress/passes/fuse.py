"""BatchNorm folding: conv→BN becomes one conv whose weights and bias absorb the BN affine transform."""

from __future__ import annotations

import copy

import torch
from torch import nn

from compress.errors import ConfigError

_FOLDABLE = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}


def can_fold(layer: nn.Module, bn: nn.Module) -> bool:
    """True when ``bn`` normalises exactly the outputs of ``layer`` with usable running statistics."""
    expected = _FOLDABLE.get(type(layer))
    if expected is None or type(bn) is not expected or bn.running_var is None:
        return False
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return bn.num_features == out


def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new conv/linear equal to ``bn(layer(x))`` with BN in eval mode (running statistics).

    Args:
        layer: ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Linear``.
        bn: the BatchNorm over its outputs.

    Returns:
        A copy of ``layer`` (always with a bias) whose output equals conv→BN in eval mode.

    Example:
        >>> conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4).eval()
        >>> x = torch.randn(1, 3, 5, 5)
        >>> torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    if not can_fold(layer, bn):
        raise ConfigError(
            f"cannot fold {type(bn).__name__} into {type(layer).__name__}: BN must cover exactly its outputs "
            "and track running statistics"
        )
    with torch.no_grad():
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        factor = gamma / torch.sqrt(bn.running_var + bn.eps)
        folded = copy.deepcopy(layer)
        shape = [-1] + [1] * (layer.weight.dim() - 1)
        folded.weight.mul_(factor.reshape(shape))
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(factor)
        new_bias = beta + (old_bias - bn.running_mean) * factor
        folded.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
    return folded
