"""Quantization-aware layers: drop-in subclasses of torch.nn layers with from_float() / to_float()."""

from compress.layers.activation import (
    QuantDropout,
    QuantGELU,
    QuantHardswish,
    QuantOutputMixin,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSoftmax,
    QuantTanh,
)
from compress.layers.attention import QuantMultiheadAttention
from compress.layers.base import FusedActivation, QuantLayerMixin
from compress.layers.conv import QuantConv1d, QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d
from compress.layers.conv_transpose import QuantConvTranspose1d, QuantConvTranspose2d
from compress.layers.elementwise import (
    FloatAdd,
    FloatCat,
    FloatMatmul,
    FloatMul,
    QuantAdd,
    QuantCat,
    QuantMatmul,
    QuantMul,
)
from compress.layers.embedding import QuantEmbedding
from compress.layers.linear import QuantLinear
from compress.layers.norm import QuantLayerNorm
from compress.layers.pooling import QuantAdaptiveAvgPool2d, QuantAvgPool2d, QuantMaxPool2d
from compress.layers.recurrent import QuantGRU, QuantLSTM

__all__ = [
    "FloatAdd",
    "FloatCat",
    "FloatMatmul",
    "FloatMul",
    "FusedActivation",
    "QuantAdaptiveAvgPool2d",
    "QuantAdd",
    "QuantAvgPool2d",
    "QuantCat",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantConvBnReLU2d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantDropout",
    "QuantEmbedding",
    "QuantGELU",
    "QuantGRU",
    "QuantHardswish",
    "QuantLSTM",
    "QuantLayerMixin",
    "QuantLayerNorm",
    "QuantLinear",
    "QuantMatmul",
    "QuantMaxPool2d",
    "QuantMul",
    "QuantMultiheadAttention",
    "QuantOutputMixin",
    "QuantReLU",
    "QuantReLU6",
    "QuantSigmoid",
    "QuantSoftmax",
    "QuantTanh",
]
