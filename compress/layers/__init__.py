"""Quantization-aware layers: drop-in subclasses of torch.nn layers with from_float() / to_float()."""

from compress.layers.base import FusedActivation, QuantLayerMixin
from compress.layers.conv import QuantConv1d, QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d
from compress.layers.linear import QuantLinear

__all__ = [
    "FusedActivation",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantConvBnReLU2d",
    "QuantLayerMixin",
    "QuantLinear",
]
