"""LayerNorm with a quantized output.

Normalisation needs a mean and a reciprocal square root, which int8 runtimes compute in float (ONNX
``LayerNormalization`` between DQ and Q, TFLite in a float or int16 kernel); the parity contract is on its
int8 output, so the layer is the float LayerNorm followed by an activation quantizer.
"""

from __future__ import annotations

from torch import nn

from compress.layers.activation import QuantOutputMixin
from compress.layers.base import check_float_type, copy_float_params
from compress.quant.config import QuantConfig


class QuantLayerNorm(QuantOutputMixin, nn.LayerNorm):
    """``nn.LayerNorm`` (float statistics and affine) with a quantized output.

    Example:
        >>> import torch
        >>> ln = QuantLayerNorm.from_float(nn.LayerNorm(8))
        >>> ln(torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """

    _FLOAT_MODULE = nn.LayerNorm
    _CTOR_ARGS = ("normalized_shape", "eps", "elementwise_affine", "bias")

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, *,
                 config: QuantConfig | None = None, quantize_io: bool = False, quantize_output: bool | None = None,
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self._init_quant(config, quantize_io, quantize_output)

    def float_kwargs(self) -> dict:
        # nn.LayerNorm stores ``bias`` as a Parameter (or None), not the constructor flag.
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias is not None}

    @classmethod
    def from_float(cls, mod: nn.LayerNorm, config: QuantConfig | None = None, *, quantize_io: bool = False,
                   quantize_output: bool | None = None):
        """Wrap a float LayerNorm (parameters copied, same device and dtype)."""
        check_float_type(cls, mod)
        ref = mod.weight
        q = cls(mod.normalized_shape, mod.eps, mod.elementwise_affine, mod.bias is not None, config=config,
                quantize_io=quantize_io, quantize_output=quantize_output,
                device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
        copy_float_params(q, mod)
        return q
