"""Activations with an output quantizer, and the mixin shared by every "float op, then quantize" layer.

An int8 runtime computes these ops with a lookup table or in float between a dequantize and a quantize;
what matters for parity is that the *output* lands on its own int8 grid. So each class here is its torch.nn
module followed by an activation :class:`~compress.quant.Quantizer` (``output_quant``), plus an optional
``input_quant`` for standalone use (``quantize_io=True``).

In a model prepared by :func:`compress.passes.prepare` these modules are not swapped in (the float module
stays and the pass puts a quantizer node on its output); they are for eager, hand-built quantized models.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.layers.base import check_float_type, copy_float_params
from compress.quant.config import QuantConfig
from compress.quant.fake import Quantizer


class QuantOutputMixin:
    """A torch.nn op whose result is fake-quantized by ``output_quant``.

    Subclasses set ``_FLOAT_MODULE`` and ``_CTOR_ARGS`` (the constructor arguments that
    :meth:`from_float` / :meth:`to_float` carry over). ``_QUANTIZE_OUTPUT`` is False for ops that keep
    their input's grid (max pooling, dropout): they get an output quantizer only when asked for one.
    """

    _FLOAT_MODULE: type[nn.Module]
    _CTOR_ARGS: tuple[str, ...] = ()
    _QUANTIZE_OUTPUT = True

    def _init_quant(self, config: QuantConfig | None, quantize_io: bool, quantize_output: bool | None) -> None:
        config = config or QuantConfig()
        self.qconfig = config
        if quantize_output is None:
            quantize_output = self._QUANTIZE_OUTPUT or quantize_io
        self.input_quant: Quantizer | None = config.activation_quantizer() if quantize_io else None
        self.output_quant: Quantizer | None = config.activation_quantizer() if quantize_output else None

    def float_kwargs(self) -> dict:
        """The constructor arguments of the equivalent float module."""
        return {name: getattr(self, name) for name in self._CTOR_ARGS}

    @classmethod
    def from_float(cls, mod: nn.Module, config: QuantConfig | None = None, *, quantize_io: bool = False,
                   quantize_output: bool | None = None):
        """Wrap a float module; ``quantize_io`` adds an input quantizer (and an output one for grid-preserving
        ops), ``quantize_output`` overrides whether the output is quantized."""
        check_float_type(cls, mod)
        kwargs = {name: getattr(mod, name) for name in cls._CTOR_ARGS}
        q = cls(**kwargs, config=config, quantize_io=quantize_io, quantize_output=quantize_output)
        _copy_tensors(q, mod)
        return q

    def to_float(self) -> nn.Module:
        """The plain torch.nn module (same arguments, same parameters, no quantizers)."""
        m = self._FLOAT_MODULE(**self.float_kwargs())
        _copy_tensors(m, self)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = super().forward(x)  # type: ignore[misc]
        return self.output_quant(y) if self.output_quant is not None else y

    def freeze(self) -> None:
        """Fix the qparams of the activation quantizers (called by convert)."""
        for q in (self.input_quant, self.output_quant):
            if q is not None:
                q.freeze()


def _copy_tensors(dst: nn.Module, src: nn.Module) -> None:
    # Parameterless ops (ReLU, pooling) have nothing to copy; LayerNorm carries weight/bias to dst's device.
    if any(True for _ in src.parameters(recurse=False)):
        dst.to(next(src.parameters(recurse=False)).device)
        copy_float_params(dst, src)


class QuantReLU(QuantOutputMixin, nn.ReLU):
    """``nn.ReLU`` with a quantized output.

    Example:
        >>> QuantReLU()(torch.tensor([-1.0, 2.0])).shape
        torch.Size([2])
    """

    _FLOAT_MODULE = nn.ReLU
    _CTOR_ARGS = ("inplace",)

    def __init__(self, inplace: bool = False, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(inplace)
        self._init_quant(config, quantize_io, quantize_output)


class QuantReLU6(QuantOutputMixin, nn.ReLU6):
    """``nn.ReLU6`` with a quantized output."""

    _FLOAT_MODULE = nn.ReLU6
    _CTOR_ARGS = ("inplace",)

    def __init__(self, inplace: bool = False, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(inplace)
        self._init_quant(config, quantize_io, quantize_output)


class QuantHardswish(QuantOutputMixin, nn.Hardswish):
    """``nn.Hardswish`` with a quantized output."""

    _FLOAT_MODULE = nn.Hardswish
    _CTOR_ARGS = ("inplace",)

    def __init__(self, inplace: bool = False, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(inplace)
        self._init_quant(config, quantize_io, quantize_output)


class QuantGELU(QuantOutputMixin, nn.GELU):
    """``nn.GELU`` (exact or tanh approximation) with a quantized output."""

    _FLOAT_MODULE = nn.GELU
    _CTOR_ARGS = ("approximate",)

    def __init__(self, approximate: str = "none", *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(approximate)
        self._init_quant(config, quantize_io, quantize_output)


class QuantSigmoid(QuantOutputMixin, nn.Sigmoid):
    """``nn.Sigmoid`` with a quantized output (the observed range lies in [0, 1])."""

    _FLOAT_MODULE = nn.Sigmoid

    def __init__(self, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__()
        self._init_quant(config, quantize_io, quantize_output)


class QuantTanh(QuantOutputMixin, nn.Tanh):
    """``nn.Tanh`` with a quantized output."""

    _FLOAT_MODULE = nn.Tanh

    def __init__(self, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__()
        self._init_quant(config, quantize_io, quantize_output)


class QuantSoftmax(QuantOutputMixin, nn.Softmax):
    """``nn.Softmax`` computed in float with a quantized output (probabilities in [0, 1]).

    Example:
        >>> QuantSoftmax(dim=-1)(torch.randn(2, 5)).sum(-1).shape
        torch.Size([2])
    """

    _FLOAT_MODULE = nn.Softmax
    _CTOR_ARGS = ("dim",)

    def __init__(self, dim: int | None = None, *, config: QuantConfig | None = None, quantize_io: bool = False,
                 quantize_output: bool | None = None):
        super().__init__(dim)
        self._init_quant(config, quantize_io, quantize_output)


class QuantDropout(QuantOutputMixin, nn.Dropout):
    """``nn.Dropout``: active in training, identity in eval and at export. Keeps its input's grid, so it has
    no output quantizer unless asked for one."""

    _FLOAT_MODULE = nn.Dropout
    _CTOR_ARGS = ("p", "inplace")
    _QUANTIZE_OUTPUT = False

    def __init__(self, p: float = 0.5, inplace: bool = False, *, config: QuantConfig | None = None,
                 quantize_io: bool = False, quantize_output: bool | None = None):
        super().__init__(p, inplace)
        self._init_quant(config, quantize_io, quantize_output)
