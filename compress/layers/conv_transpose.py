"""Quantized transposed convolution (U-Net / decoder upsampling), per output channel like every weight layer.

torch stores a transposed conv's weight as ``[C_in, C_out / groups, k...]``: the output channels are axis 1, so
the weight quantizer's per-channel axis is 1 (ONNX ConvTranspose and TFLite TRANSPOSE_CONV take the scales on
that axis of their own layouts). Grouped transposed convs would interleave groups along that axis; they have
no int8 form here and stay float (reported).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError
from compress.layers.base import QuantLayerMixin, check_float_type, copy_float_params
from compress.quant.config import QuantConfig


class _QuantConvTransposeNd(QuantLayerMixin):
    _WEIGHT_AXIS = 1
    _FUNCTION = staticmethod(F.conv_transpose2d)

    def _kwargs(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                    stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, bias=self.bias is not None, dilation=self.dilation,
                    padding_mode=self.padding_mode)

    @classmethod
    def from_float(cls, mod: nn.Module, config: QuantConfig | None = None, *, quantize_io: bool = False):
        check_float_type(cls, mod)
        if mod.groups != 1 or mod.padding_mode != "zeros":
            raise ConfigError(f"{type(mod).__name__} with groups={mod.groups}, padding_mode={mod.padding_mode!r} "
                              "has no int8 kernel; use groups=1 and zero padding, or leave it in float")
        q = cls(**_QuantConvTransposeNd._kwargs(mod), config=config, quantize_io=quantize_io,
                device=mod.weight.device, dtype=mod.weight.dtype)
        copy_float_params(q, mod)
        return q

    def to_float(self) -> nn.Module:
        m = self._FLOAT_MODULE(**self._kwargs(), device=self.weight.device, dtype=self.weight.dtype)
        copy_float_params(m, self)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self._quant_input(x)
        y = self._FUNCTION(x, self.quantized_weight(), self.quantized_bias(), self.stride, self.padding,
                           self.output_padding, self.groups, self.dilation)
        return self._quant_output(y)


class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """Drop-in ``nn.ConvTranspose1d`` simulating int8 inference.

    Example:
        >>> QuantConvTranspose1d.from_float(nn.ConvTranspose1d(2, 4, 2, stride=2))(torch.randn(1, 2, 5)).shape
        torch.Size([1, 4, 10])
    """

    _FLOAT_MODULE = nn.ConvTranspose1d
    _FUNCTION = staticmethod(F.conv_transpose1d)

    def __init__(self, *args, config: QuantConfig | None = None, quantize_io: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(config or QuantConfig(), quantize_io)


class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """Drop-in ``nn.ConvTranspose2d`` simulating int8 inference (per output channel, axis 1 of the weight).

    Example:
        >>> QuantConvTranspose2d.from_float(nn.ConvTranspose2d(3, 8, 2, stride=2))(torch.randn(1, 3, 4, 4)).shape
        torch.Size([1, 8, 8, 8])
    """

    _FLOAT_MODULE = nn.ConvTranspose2d

    def __init__(self, *args, config: QuantConfig | None = None, quantize_io: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(config or QuantConfig(), quantize_io)
