"""The numerics both exporters write with: weight codes, int32 bias, BN folding (one home for both formats).

The functions live in :mod:`compress.quant.numerics`, below the layers, because the quant layers compute with
the same arithmetic in their forward (imports flow ``quant ← layers ← ... ← exporters``); this module is the
exporters' name for them, so an emitter never re-derives a code.

Example:
    >>> import torch
    >>> from compress.exporters.numerics import bias_codes
    >>> bias_codes(torch.tensor([0.3]), torch.tensor(0.1), torch.tensor([0.5]))[0].tolist()
    [6]
"""

from compress.quant.numerics import (
    INT32_MAX,
    INT32_MIN,
    WEIGHT_QMAX,
    WEIGHT_QMIN,
    bias_codes,
    bias_scale,
    bn_factor,
    channel_shape,
    fake_quantize_bias,
    fold_bn,
    weight_codes,
)

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
