"""The integer numerics of the contract (DESIGN.md, "Numerics contract"), written once.

Weight codes (int8 symmetric, per output channel, [-127, 127]), the int32 bias (scale = input scale × weight
scale, zero point 0) and BatchNorm folding. The quant layers compute with these in their forward (so the
simulation *is* this arithmetic), and both exporters write what these functions return (through
:mod:`compress.exporters.numerics`), so the file holds exactly the values the simulation used.

It lives in ``compress.quant`` rather than ``compress.exporters`` because the layers need it and imports
flow one way (``quant ← layers ← ... ← exporters``).

Example:
    >>> import torch
    >>> codes, scale = bias_codes(torch.tensor([0.5, -0.26]), torch.tensor(0.1), torch.tensor([0.5, 0.25]))
    >>> codes.tolist(), scale.tolist()
    ([10, -10], [0.05000000074505806, 0.02500000037252903])
"""

from __future__ import annotations

import numpy as np
import torch

from compress.errors import ExportError
from compress.quant.fake import Quantizer, QuantState

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Weights are symmetric on a narrow range: -128 is never used, so -w is always representable.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127


def channel_shape(ndim: int, axis: int | None) -> list[int]:
    """The shape that broadcasts a per-channel vector along ``axis`` of an ``ndim``-d tensor (all 1s per tensor).

    Example:
        >>> channel_shape(4, 0), channel_shape(3, -1), channel_shape(2, None)
        ([-1, 1, 1, 1], [1, 1, -1], [1, 1])
    """
    shape = [1] * ndim
    if axis is not None:
        shape[axis % ndim] = -1
    return shape


def weight_codes(weight: torch.Tensor, wq: Quantizer, where: str = "weight") -> tuple[np.ndarray, np.ndarray,
                                                                                    int | None]:
    """(int8 codes, float32 scale ``[]`` or ``[C]``, per-channel axis or None) of ``weight`` under the frozen
    weight quantizer ``wq``: the codes the simulation computes with.

    The codes are read back from the quantizer's own fake-quantized weight (``wq(weight) / scale``, exact),
    not recomputed as ``round(w / s)``: torch's fake-quantize kernels multiply by ``1 / s``, which can round a
    tie the other way, and the file must hold the simulation's values.

    Raises:
        ExportError: the quantizer is not calibrated, or the weights are asymmetric (int8 kernels need zero
            point 0).

    Example:
        >>> from compress.quant import WEIGHT_INT8
        >>> wq = Quantizer(WEIGHT_INT8, from_tensor=True)
        >>> w = torch.tensor([[1.0, -0.5], [0.2, 0.1]])
        >>> wq.freeze(w)
        >>> codes, scale, axis = weight_codes(w, wq)
        >>> codes.tolist(), axis
        ([[127, -64], [127, 64]], 0)
    """
    if not isinstance(wq, Quantizer) or wq.state is QuantState.OBSERVING:
        raise ExportError(f"{where!r} has no usable weight quantizer; run convert() before exporting")
    with torch.no_grad():
        fq = wq(weight.detach())
        scale = wq.scale.detach().float()
        zp = wq.zero_point.detach()
        axis = wq.spec.axis
        axis = axis % fq.dim() if axis is not None and scale.dim() == 1 else None
        shape = channel_shape(fq.dim(), axis)
        codes = torch.clamp(torch.round(fq / scale.reshape(shape)) + zp.reshape(shape), wq.spec.qmin, wq.spec.qmax)
    if int(zp.abs().max()) != 0:
        raise ExportError(f"{where!r} has asymmetric weights; the int8 kernels need symmetric weights "
                          "(QuantConfig(weight=...symmetric=True))")
    return codes.to(torch.int8).numpy(), scale.numpy(), axis


def bias_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype = torch.float32):
    """The int32 bias grid: ``input_scale × weight_scale`` (per output channel when the weights are)."""
    return (input_scale.reshape(()) * weight_scale).to(dtype)


def bias_codes(bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(int32 codes, scale) of ``bias`` on the grid ``input_scale × weight_scale``, zero point 0."""
    scale = bias_scale(input_scale, weight_scale, bias.dtype)
    with torch.no_grad():
        codes = torch.clamp(torch.round(bias.detach() / scale), INT32_MIN, INT32_MAX)
    return codes.to(torch.int32), scale


def fake_quantize_bias(bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """Snap a float bias to its int32 grid (:func:`bias_codes`) and back; the gradient passes straight through."""
    codes, scale = bias_codes(bias, input_scale, weight_scale)
    return (codes.to(bias.dtype) * scale - bias).detach() + bias


def bn_factor(running_var: torch.Tensor, eps: float, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """``gamma / sqrt(var + eps)``: what folding BatchNorm multiplies each output channel by."""
    gamma = gamma if gamma is not None else torch.ones_like(running_var)
    return gamma / torch.sqrt(running_var + eps)


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: torch.nn.Module) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """(weight, bias) of the one layer equal to ``layer → bn`` with BN in eval mode (running statistics).

    ``weight``'s dim 0 indexes the output channels (conv, linear); keeps autograd (QAT folds every step).

    Example:
        >>> from torch import nn
        >>> conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3).eval()
        >>> _ = bn.running_var.fill_(4.0)
        >>> w, b = fold_bn(conv.weight, conv.bias, bn)
        >>> x = torch.randn(1, 2, 4, 4)
        >>> torch.allclose(nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-6)
        True
    """
    factor = bn_factor(bn.running_var, bn.eps, bn.weight if bn.affine else None)
    beta = bn.bias if bn.affine else torch.zeros_like(factor)
    old_bias = bias if bias is not None else torch.zeros_like(factor)
    folded_w = weight * factor.reshape(channel_shape(weight.dim(), 0))
    folded_b = beta + (old_bias - bn.running_mean) * factor
    return folded_w, folded_b


__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "WEIGHT_QMAX",
    "WEIGHT_QMIN",
    "bias_codes",
    "bias_scale",
    "bn_factor",
    "channel_shape",
    "fake_quantize_bias",
    "fold_bn",
    "weight_codes",
]
