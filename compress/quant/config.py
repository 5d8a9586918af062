"""QuantConfig: the one set of choices that decides how layers, passes and exporters quantize a model."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from compress.errors import ConfigError
from compress.quant.fake import Quantizer
from compress.quant.observers import FixedQParamsObserver
from compress.quant.spec import ACT_INT8, WEIGHT_INT8, ObserverKind, QuantSpec


class QuantMode(str, Enum):
    """How one weight layer is quantized (DESIGN.md, numerics contract).

    ``auto`` is not a layer mode: the sensitivity pass resolves it into one of these per layer
    (``QuantizeOptions.mode``) before :func:`~compress.passes.prepare` sees the config.
    """

    STATIC = "static"  # int8 weights and int8 activations with calibrated scales (QDQ / int8 TFLite builtins)
    DYNAMIC = "dynamic"  # int8 weights; the input is quantized per call from its own min/max (uint8 in ONNX)
    WEIGHT_ONLY = "weight-only"  # int8 weights dequantized to float, float compute: smallest file, fp32 accuracy
    FLOAT = "float"  # the layer is left float (reported in float_ops with the reason)


def parse_mode(value, where: str = "mode") -> QuantMode:
    """A :class:`QuantMode` from its value (``"weight_only"`` is accepted for ``"weight-only"``).

    Example:
        >>> parse_mode("weight_only")
        <QuantMode.WEIGHT_ONLY: 'weight-only'>
    """
    try:
        return QuantMode(value.replace("_", "-") if isinstance(value, str) else value)
    except ValueError:
        choices = ", ".join(m.value for m in QuantMode)
        raise ConfigError(f"unknown {where} {value!r}; choose one of: {choices}") from None


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize weights and activations.

    Args:
        weight: weight format (default int8 symmetric per output channel, narrow range).
        activation: activation format (default int8 asymmetric per tensor).
        observer: how activation ranges are calibrated.
        learnable_scale: train activation scales with LSQ during QAT.
        mode: the :class:`QuantMode` of every weight layer not named in ``layer_modes``; ops between layers
            get calibrated activation quantizers only in ``static`` mode.
        layer_modes: ``{module path: mode}`` overrides, with the user's module paths as the report's
            ``quantized_layers`` lists them (``prepare`` rejects a path the model does not have).

    Example:
        >>> from compress.quant.spec import WEIGHT_INT8_PER_TENSOR
        >>> QuantConfig(weight=WEIGHT_INT8_PER_TENSOR).weight.per_channel
        False
        >>> QuantConfig(mode="dynamic", layer_modes={"classifier": "float"}).mode_for("classifier").value
        'float'
    """

    weight: QuantSpec = field(default_factory=lambda: WEIGHT_INT8)
    activation: QuantSpec = field(default_factory=lambda: ACT_INT8)
    observer: ObserverKind = ObserverKind.MINMAX
    learnable_scale: bool = False
    mode: QuantMode = QuantMode.STATIC
    layer_modes: Mapping[str, QuantMode] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "mode", parse_mode(self.mode))
        if not isinstance(self.layer_modes, Mapping):
            raise ConfigError(f"layer_modes must map module paths to modes, got {type(self.layer_modes).__name__}")
        object.__setattr__(self, "layer_modes", {str(name): parse_mode(m, f"mode of layer {name!r}")
                                                 for name, m in self.layer_modes.items()})
        try:
            object.__setattr__(self, "observer", ObserverKind(self.observer))
        except ValueError:
            choices = ", ".join(k.value for k in ObserverKind)
            raise ConfigError(f"unknown observer {self.observer!r}; choose one of: {choices}") from None
        if self.weight.per_channel is False and self.weight.granularity is None:
            raise ConfigError("weight granularity must be PerTensor() or PerChannel(axis)")
        if not self.weight.symmetric:
            raise ConfigError("weights must be symmetric (zero point 0) to match int8 runtimes; set symmetric=True")

    def mode_for(self, path: str) -> QuantMode:
        """The mode of the layer at module path ``path``: its own entry, else its nearest named parent's
        (``"encoder.layer.0"`` sets every layer under it), else ``mode``.

        Example:
            >>> QuantConfig(layer_modes={"encoder": "weight-only"}).mode_for("encoder.fc1").value
            'weight-only'
        """
        while True:
            if path in self.layer_modes:
                return self.layer_modes[path]
            if "." not in path:
                return self.mode
            path = path.rpartition(".")[0]

    def for_layer(self, path: str) -> QuantConfig:
        """This config as the layer at ``path`` sees it: its own mode, no per-layer table."""
        return replace(self, mode=self.mode_for(path), layer_modes={})

    def check_layer_names(self, known: Iterable[str]) -> None:
        """Raise a one-line :class:`ConfigError` for a ``layer_modes`` name not among ``known`` module paths.

        Example:
            >>> QuantConfig(layer_modes={"encoder.fc": "float"}).check_layer_names(["encoder.fc1", "head"])
            Traceback (most recent call last):
            ...
            compress.errors.ConfigError: no layer 'encoder.fc' in the model (layer modes name module paths); close names: encoder.fc1
        """
        known = list(dict.fromkeys(known))
        for name in self.layer_modes:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"close names: {', '.join(close)}" if close else \
                f"module paths: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}"
            raise ConfigError(f"no layer {name!r} in the model (layer modes name module paths); {hint}")

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
            "mode": self.mode.value,
            "layer_modes": {name: m.value for name, m in self.layer_modes.items()},
        }
