"""QuantLinear: nn.Linear with int8 per-channel weights, int32 bias and optional int8 input/output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.layers.base import QuantLayerMixin, check_float_type, copy_float_params
from compress.layers.dynamic import LayerModeMixin
from compress.quant.config import QuantConfig


class QuantLinear(LayerModeMixin, QuantLayerMixin, nn.Linear):
    """Drop-in ``nn.Linear`` that simulates int8 inference (``config.mode``: static, dynamic, weight-only).

    Example:
        >>> layer = QuantLinear.from_float(nn.Linear(4, 2), quantize_io=True)
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
        >>> QuantLinear.from_float(nn.Linear(4, 2), QuantConfig(mode="dynamic")).mode.value
        'dynamic'
    """

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 config: QuantConfig | None = None, quantize_io: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quant(config or QuantConfig(), quantize_io)
        self._drop_io_quant_unless_static()

    @classmethod
    def from_float(cls, mod: nn.Linear, config: QuantConfig | None = None, *, quantize_io: bool = False):
        check_float_type(cls, mod)
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, config=config, quantize_io=quantize_io,
                device=mod.weight.device, dtype=mod.weight.dtype)
        copy_float_params(q, mod)
        return q

    def to_float(self) -> nn.Linear:
        m = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                      device=self.weight.device, dtype=self.weight.dtype)
        copy_float_params(m, self)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._mode_input(x)
        y = F.linear(x, self.quantized_weight(), self.quantized_bias())
        return self._quant_output(y)
