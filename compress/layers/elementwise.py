"""Elementwise and tensor-combining ops as modules: add, mul, cat, matmul.

Functional ops (``a + b``, ``torch.cat``) have no module to hang quantizers on. In a model prepared by
:func:`compress.passes.prepare` the pass inserts quantizer nodes around them in the fx graph; these modules
are for eager, hand-built models: replace ``x + y`` by ``self.add(x, y)`` with ``self.add = QuantAdd()``.

Each op quantizes every input with its own quantizer (``input_quants[i]``; an int8 kernel receives int8
operands, each on its own grid) and its result with ``output_quant``. ``to_float()`` returns the matching
``Float*`` module, which does the plain op and traces to the plain functional call under torch.fx.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compress.errors import ConfigError
from compress.quant.config import QuantConfig


class FloatAdd(nn.Module):
    """``a + b`` as a module (the float counterpart of :class:`QuantAdd`)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class FloatMul(nn.Module):
    """``a * b`` as a module (the float counterpart of :class:`QuantMul`)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class FloatMatmul(nn.Module):
    """``torch.matmul(a, b)`` as a module (the float counterpart of :class:`QuantMatmul`)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class FloatCat(nn.Module):
    """``torch.cat(tensors, dim)`` as a module (the float counterpart of :class:`QuantCat`)."""

    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(tensors), dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class _QuantElementwise(nn.Module):
    """Quantizers around one float op: ``input_quants`` (one per operand) and ``output_quant``."""

    _FLOAT_CLASS: type[nn.Module]

    def __init__(self, num_inputs: int = 2, *, config: QuantConfig | None = None, quantize_inputs: bool = True):
        super().__init__()
        if num_inputs < 1:
            raise ConfigError(f"{type(self).__name__} needs at least one input, got num_inputs={num_inputs}")
        config = config or QuantConfig()
        self.qconfig = config
        self.num_inputs = num_inputs
        # Without input quantizers (quantize_inputs=False) the operands are assumed to be int8 already
        # (outputs of upstream quantizers), as in prepared graphs.
        self.input_quants = nn.ModuleList(
            [config.activation_quantizer() for _ in range(num_inputs)] if quantize_inputs else []
        )
        self.output_quant = config.activation_quantizer()

    def _quant_inputs(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != self.num_inputs:
            raise ConfigError(
                f"{type(self).__name__} was built for {self.num_inputs} inputs but got {len(inputs)}; "
                f"build it with num_inputs={len(inputs)}"
            )
        if not len(self.input_quants):
            return list(inputs)
        return [q(x) for q, x in zip(self.input_quants, inputs, strict=True)]

    def _op(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.output_quant(self._op(self._quant_inputs(inputs)))

    def freeze(self) -> None:
        """Fix the qparams of all quantizers (called by convert)."""
        for q in [*self.input_quants, self.output_quant]:
            q.freeze()

    def to_float(self) -> nn.Module:
        """The float module doing the same op, without quantizers."""
        return self._FLOAT_CLASS()

    def extra_repr(self) -> str:
        return f"num_inputs={self.num_inputs}, quantize_inputs={bool(len(self.input_quants))}"


class QuantAdd(_QuantElementwise):
    """int8 ``a + b``: both operands and the sum quantized.

    Args:
        config: quantization formats (default int8 activations).
        quantize_inputs: give each operand its own quantizer (standalone use).

    Example:
        >>> add = QuantAdd()
        >>> add(torch.ones(2), torch.ones(2))
        tensor([2., 2.])
    """

    _FLOAT_CLASS = FloatAdd

    def __init__(self, *, config: QuantConfig | None = None, quantize_inputs: bool = True):
        super().__init__(2, config=config, quantize_inputs=quantize_inputs)

    def _op(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[0] + inputs[1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._run((a, b))


class QuantMul(_QuantElementwise):
    """int8 ``a * b`` (elementwise, broadcasting).

    Example:
        >>> QuantMul()(torch.ones(2), torch.ones(2))
        tensor([1., 1.])
    """

    _FLOAT_CLASS = FloatMul

    def __init__(self, *, config: QuantConfig | None = None, quantize_inputs: bool = True):
        super().__init__(2, config=config, quantize_inputs=quantize_inputs)

    def _op(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[0] * inputs[1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._run((a, b))


class QuantMatmul(_QuantElementwise):
    """int8 ``torch.matmul(a, b)`` with int32 accumulation (attention scores, A·V).

    Example:
        >>> QuantMatmul()(torch.ones(2, 3), torch.ones(3, 4)).shape
        torch.Size([2, 4])
    """

    _FLOAT_CLASS = FloatMatmul

    def __init__(self, *, config: QuantConfig | None = None, quantize_inputs: bool = True):
        super().__init__(2, config=config, quantize_inputs=quantize_inputs)

    def _op(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.matmul(inputs[0], inputs[1])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self._run((a, b))


class QuantCat(_QuantElementwise):
    """int8 ``torch.cat(tensors, dim)`` over a fixed number of inputs, each with its own input quantizer.

    Args:
        dim: concatenation axis.
        num_inputs: how many tensors ``forward`` receives.
        config: quantization formats.
        quantize_inputs: give each input its own quantizer (standalone use).

    Example:
        >>> QuantCat(dim=1)([torch.ones(1, 2), torch.zeros(1, 3)]).shape
        torch.Size([1, 5])
    """

    _FLOAT_CLASS = FloatCat

    def __init__(self, dim: int = 0, num_inputs: int = 2, *, config: QuantConfig | None = None,
                 quantize_inputs: bool = True):
        super().__init__(num_inputs, config=config, quantize_inputs=quantize_inputs)
        self.dim = dim

    def _op(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(inputs, dim=self.dim)

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._run(tensors)

    def to_float(self) -> FloatCat:
        return FloatCat(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, " + super().extra_repr()
