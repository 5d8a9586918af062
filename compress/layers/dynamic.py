"""Dynamic and weight-only modes of the weight layers: what the simulation computes per call.

``dynamic``: the weights are int8 (the layer's ``weight_quant``); the input is quantized on every call from
its own range, exactly as onnxruntime's ``DynamicQuantizeLinear`` does it (uint8, asymmetric, per tensor):

* the range always includes 0: ``lo = min(min(x), 0)``, ``hi = max(max(x), 0)``;
* ``scale = (hi - lo) / 255`` in float32 (1 when ``hi == lo``: an all-zero input);
* ``zero_point = round_half_even(clamp(-lo / scale, 0, 255))``;
* ``q = clamp(round_half_even(x / scale) + zero_point, 0, 255)``.

The integer product (``MatMulInteger`` / ``ConvInteger``) is exact, so dequantizing the codes and computing
in float gives the runtime's result up to float summation order. The bias stays float: the runtime adds it
after scaling the int32 accumulator by ``input_scale × weight_scale``.

``weight-only``: int8 weights dequantized to float, float input, float bias, float compute.
"""

from __future__ import annotations

import torch

from compress.quant.config import QuantMode

#: The uint8 code range of DynamicQuantizeLinear (the only type the ONNX op produces).
DYNAMIC_QMIN, DYNAMIC_QMAX = 0, 255


def dynamic_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scale [], float32 zero point []) that DynamicQuantizeLinear computes for ``x``.

    Example:
        >>> s, z = dynamic_qparams(torch.tensor([-1.0, 0.5, 3.0]))
        >>> round(s.item() * 255, 5), z.item()
        (4.0, 64.0)
    """
    x = x.detach().float()
    zero = x.new_zeros(())
    lo = torch.minimum(x.min(), zero) if x.numel() else zero
    hi = torch.maximum(x.max(), zero) if x.numel() else zero
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / float(DYNAMIC_QMAX - DYNAMIC_QMIN))
    zero_point = torch.round(torch.clamp(DYNAMIC_QMIN - lo / scale, DYNAMIC_QMIN, DYNAMIC_QMAX))
    return scale, zero_point


def fake_quantize_dynamic(x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized as DynamicQuantizeLinear quantizes it, back in float (straight-through gradient).

    Example:
        >>> x = torch.tensor([-1.0, 0.5, 3.0])
        >>> torch.allclose(fake_quantize_dynamic(x), x, atol=4 / 255 / 2)
        True
    """
    scale, zero_point = dynamic_qparams(x)
    with torch.no_grad():
        q = torch.clamp(torch.round(x.detach().float() / scale) + zero_point, DYNAMIC_QMIN, DYNAMIC_QMAX)
        snapped = ((q - zero_point) * scale).to(x.dtype)
    return x + (snapped - x).detach()


class LayerModeMixin:
    """The mode of a weight layer (``qconfig.mode``) and how its forward treats the input in that mode.

    Mixed into the quant layers that implement the modes in ``_MODES``; ``prepare`` never builds a layer in
    a mode its class does not list.
    """

    _MODES: tuple[QuantMode, ...] = (QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)

    @property
    def mode(self) -> QuantMode:
        # Layers pickled before modes existed have a QuantConfig without the field: they are static.
        return getattr(self.qconfig, "mode", QuantMode.STATIC)

    def _drop_io_quant_unless_static(self) -> None:
        """Dynamic / weight-only layers have no calibrated input or output grid: no quantizers there."""
        if self.mode is not QuantMode.STATIC:
            self.input_quant = self.output_quant = None

    def _mode_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is QuantMode.DYNAMIC:
            return fake_quantize_dynamic(x)
        return self._quant_input(x)


def layer_mode(module) -> QuantMode:
    """The mode a quant layer runs in (its ``qconfig.mode``; not ``.mode``, which nn.LSTM uses for "LSTM")."""
    mode = getattr(getattr(module, "qconfig", None), "mode", QuantMode.STATIC)
    return mode if isinstance(mode, QuantMode) else QuantMode.STATIC


def supported_modes(cls: type) -> tuple[QuantMode, ...]:
    """The modes a quant layer class implements (static only unless it says otherwise)."""
    return getattr(cls, "_MODES", (QuantMode.STATIC,))
