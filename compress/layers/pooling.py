"""Pooling layers for eager int8 models.

Max pooling picks one of its inputs, so its output is already on the input's grid: no quantizer of its own
unless asked for (``quantize_output=True``). Average pooling computes a new value (a mean the int8 kernel
rounds), so its output is quantized.
"""

from __future__ import annotations

from torch import nn

from compress.errors import ConfigError
from compress.layers.activation import QuantOutputMixin
from compress.quant.config import QuantConfig


class QuantMaxPool2d(QuantOutputMixin, nn.MaxPool2d):
    """``nn.MaxPool2d`` that keeps its input's quantization grid.

    Example:
        >>> import torch
        >>> QuantMaxPool2d(2)(torch.randn(1, 3, 4, 4)).shape
        torch.Size([1, 3, 2, 2])
    """

    _FLOAT_MODULE = nn.MaxPool2d
    _CTOR_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
    _QUANTIZE_OUTPUT = False

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        if return_indices and (quantize_io or quantize_output):
            raise ConfigError("QuantMaxPool2d cannot quantize (values, indices); use return_indices=False")
        self._init_quant(config, quantize_io, quantize_output)


class QuantAvgPool2d(QuantOutputMixin, nn.AvgPool2d):
    """``nn.AvgPool2d`` with a quantized output.

    Example:
        >>> import torch
        >>> QuantAvgPool2d(2)(torch.randn(1, 3, 4, 4)).shape
        torch.Size([1, 3, 2, 2])
    """

    _FLOAT_MODULE = nn.AvgPool2d
    _CTOR_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self._init_quant(config, quantize_io, quantize_output)


class QuantAdaptiveAvgPool2d(QuantOutputMixin, nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` with a quantized output (global average pooling: ``output_size=1``).

    Example:
        >>> import torch
        >>> QuantAdaptiveAvgPool2d(1)(torch.randn(2, 3, 5, 5)).shape
        torch.Size([2, 3, 1, 1])
    """

    _FLOAT_MODULE = nn.AdaptiveAvgPool2d
    _CTOR_ARGS = ("output_size",)

    def __init__(self, output_size, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(output_size)
        self._init_quant(config, quantize_io, quantize_output)
