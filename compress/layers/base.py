"""What every quantization-aware layer shares.

A quant layer *is* its float layer (``QuantConv2d`` subclasses ``nn.Conv2d``), so code that inspects
``isinstance(m, nn.Conv2d)``, the optimizer, ``state_dict`` and ``.to(device)`` keep working. On top it has:

* ``weight_quant`` — a :class:`~compress.quant.Quantizer` applied to the weight on every forward;
* ``input_quant`` / ``output_quant`` — optional activation quantizers. In a model prepared by
  :func:`compress.passes.prepare` they stay ``None``: activation quantizers live on the graph edges, one per
  tensor, shared by all consumers. Standalone users switch them on with ``from_float(..., quantize_io=True)``.
* ``input_scale`` — the scale of the int8 input, set by ``convert`` from the upstream quantizer, so the bias
  can be snapped to the int32 grid with scale input_scale × weight_scale (the numerics contract).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from compress.quant.config import QuantConfig
from compress.quant.fake import Quantizer, QuantState

# The bias arithmetic is the numerics module's (one home for layers and exporters); named here for the layers.
from compress.quant.numerics import INT32_MAX, INT32_MIN, fake_quantize_bias  # noqa: F401


class FusedActivation(str, Enum):
    """Activations an int8 kernel can apply in its requantization step (clamping the output range)."""

    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"


def apply_fused(y: torch.Tensor, act: FusedActivation) -> torch.Tensor:
    if act is FusedActivation.RELU:
        return torch.relu(y)
    if act is FusedActivation.RELU6:
        return torch.clamp(y, 0.0, 6.0)
    return y


class QuantLayerMixin:
    """Shared plumbing of the weight-carrying quant layers. Subclasses set ``_FLOAT_MODULE``."""

    _FLOAT_MODULE: type[nn.Module]
    # The weight axis that indexes output channels (1 for transposed convolutions).
    _WEIGHT_AXIS = 0

    def _init_quant(self, config: QuantConfig, quantize_io: bool) -> None:
        self.qconfig = config
        self.weight_quant = config.weight_quantizer(self._WEIGHT_AXIS)
        self.input_quant = config.activation_quantizer() if quantize_io else None
        self.output_quant = config.activation_quantizer() if quantize_io else None
        self.activation = FusedActivation.NONE
        self.register_buffer("input_scale", None)

    # -- pieces the forward and the exporters share ---------------------------------------------------
    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def known_input_scale(self) -> torch.Tensor | None:
        if self.input_quant is not None and self.input_quant.state is not QuantState.OBSERVING:
            return self.input_quant.scale.detach()
        return self.input_scale

    def quantized_bias(self, bias: torch.Tensor | None = None) -> torch.Tensor | None:
        """The bias as the int8 kernel sees it: on the int32 grid once the input scale is known.

        ``bias`` defaults to the layer's own; fused layers pass their folded bias.
        """
        bias = self.bias if bias is None else bias
        if bias is None:
            return None
        input_scale = self.known_input_scale()
        if input_scale is None or self.weight_quant.state is QuantState.OBSERVING:
            return bias
        return fake_quantize_bias(bias, input_scale, self.weight_quant.scale.detach())

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x) if self.input_quant is not None else x

    def _quant_output(self, y: torch.Tensor) -> torch.Tensor:
        y = apply_fused(y, self.activation)
        return self.output_quant(y) if self.output_quant is not None else y

    def freeze(self) -> None:
        """Fix every qparam (called by convert): weight scale from the final weight, observers dropped."""
        self.weight_quant.freeze(self.weight.detach())
        for q in (self.input_quant, self.output_quant):
            if q is not None:
                q.freeze()

    def extra_repr(self) -> str:  # type: ignore[override]
        base = super().extra_repr()  # type: ignore[misc]
        if self.activation is not FusedActivation.NONE:
            base += f", activation={self.activation.value}"
        return base


def copy_float_params(dst: nn.Module, src: nn.Module) -> None:
    """Copy parameters and buffers of ``src`` into the same-named tensors of ``dst`` (no grad history).

    A pruning mask on a tensor of ``src`` is carried over to ``dst`` (a masked layer stays masked through
    ``from_float`` / ``to_float``, so QAT after pruning keeps the sparsity pattern).
    """
    from compress.layers.prune import get_mask, original, set_mask

    with torch.no_grad():
        for name, p in src.named_parameters(recurse=False):
            getattr(dst, name).copy_(p)
        for name, b in src.named_buffers(recurse=False):
            if b is not None and getattr(dst, name, None) is not None:
                getattr(dst, name).copy_(b)
        # Masked tensors live under src.parametrizations, not among src's own parameters.
        for name in getattr(src, "parametrizations", {}):
            original(dst, name).copy_(original(src, name))
            mask = get_mask(src, name)
            if mask is not None:
                set_mask(dst, name, mask)


def check_float_type(cls: type, mod: nn.Module) -> None:
    from compress.errors import ConfigError

    # A pruning mask (a parametrization) subclasses the module's type; the layer underneath is what counts.
    if type_before_parametrizations(mod) is not cls._FLOAT_MODULE:
        raise ConfigError(
            f"{cls.__name__}.from_float expects a {cls._FLOAT_MODULE.__name__}, got "
            f"{type_before_parametrizations(mod).__name__}"
        )


def all_quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer)]
