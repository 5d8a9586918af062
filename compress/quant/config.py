"""QuantConfig: the one set of choices that decides how layers, passes and exporters quantize a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.errors import ConfigError
from compress.quant.fake import Quantizer
from compress.quant.observers import FixedQParamsObserver
from compress.quant.spec import ACT_INT8, WEIGHT_INT8, ObserverKind, QuantSpec


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize weights and activations.

    Args:
        weight: weight format (default int8 symmetric per output channel, narrow range).
        activation: activation format (default int8 asymmetric per tensor).
        observer: how activation ranges are calibrated.
        learnable_scale: train activation scales with LSQ during QAT.

    Example:
        >>> from compress.quant.spec import WEIGHT_INT8_PER_TENSOR
        >>> QuantConfig(weight=WEIGHT_INT8_PER_TENSOR).weight.per_channel
        False
    """

    weight: QuantSpec = field(default_factory=lambda: WEIGHT_INT8)
    activation: QuantSpec = field(default_factory=lambda: ACT_INT8)
    observer: ObserverKind = ObserverKind.MINMAX
    learnable_scale: bool = False

    def __post_init__(self):
        try:
            object.__setattr__(self, "observer", ObserverKind(self.observer))
        except ValueError:
            choices = ", ".join(k.value for k in ObserverKind)
            raise ConfigError(f"unknown observer {self.observer!r}; choose one of: {choices}") from None
        if self.weight.per_channel is False and self.weight.granularity is None:
            raise ConfigError("weight granularity must be PerTensor() or PerChannel(axis)")
        if not self.weight.symmetric:
            raise ConfigError("weights must be symmetric (zero point 0) to match int8 runtimes; set symmetric=True")

    def activation_quantizer(self) -> Quantizer:
        return Quantizer(self.activation, self.observer, learnable=self.learnable_scale)

    def fixed_activation_quantizer(self, kind: str) -> Quantizer:
        """Quantizer with the a-priori grid of a bounded op: ``"unit"`` [0, 1) or ``"symmetric_unit"`` [-1, 1)."""
        make = FixedQParamsObserver.unit_interval if kind == "unit" else FixedQParamsObserver.symmetric_unit
        return Quantizer.with_observer(self.activation, make(self.activation))

    def weight_quantizer(self, axis: int = 0) -> Quantizer:
        return Quantizer(self.weight.with_axis(axis), from_tensor=True)

    def to_dict(self) -> dict:
        return {
            "weight": self.weight.to_dict(),
            "activation": self.activation.to_dict(),
            "observer": self.observer.value,
            "learnable_scale": self.learnable_scale,
        }
