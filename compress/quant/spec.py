"""What a quantized tensor looks like: bit width, sign, symmetry and granularity.

The defaults follow the numerics contract in DESIGN.md (the TFLite int8 spec):

* weights: int8, symmetric, per output channel, zero point 0, narrow range [-127, 127];
* activations: int8, asymmetric, per tensor, range [-128, 127].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from compress.errors import ConfigError


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale (and zero point) per slice along ``axis``; axis 0 is the output channel of conv/linear."""

    axis: int = 0


Granularity = PerTensor | PerChannel


class ObserverKind(str, Enum):
    """How an activation range is estimated from calibration data."""

    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    MSE = "mse"
    AUTO = "auto"  # minmax / percentile / MSE chosen per tensor (compress.passes.ptq.select_ranges)


@dataclass(frozen=True)
class QuantSpec:
    """The integer format of one tensor.

    Args:
        bits: 2..8.
        signed: int (True) or uint (False) storage.
        symmetric: zero point fixed at 0 (signed) or at the mid-point (unsigned).
        granularity: :class:`PerTensor` or :class:`PerChannel`.
        narrow_range: drop the most negative code (int8 weights use [-127, 127] so that -w is representable).

    Example:
        >>> QuantSpec(bits=8).qmin, QuantSpec(bits=8).qmax
        (-128, 127)
        >>> WEIGHT_INT8.qmin
        -127
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    granularity: Granularity = field(default_factory=PerTensor)
    narrow_range: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in 2..8, got {self.bits!r}")
        if not isinstance(self.granularity, PerTensor | PerChannel):
            raise ConfigError(
                f"granularity must be PerTensor() or PerChannel(axis), got {self.granularity!r}"
            )

    @property
    def qmin(self) -> int:
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def qmax(self) -> int:
        if self.signed:
            return 2 ** (self.bits - 1) - 1
        return 2**self.bits - 1 - (1 if self.narrow_range else 0)

    @property
    def per_channel(self) -> bool:
        return isinstance(self.granularity, PerChannel)

    @property
    def axis(self) -> int | None:
        return self.granularity.axis if isinstance(self.granularity, PerChannel) else None

    def with_axis(self, axis: int) -> QuantSpec:
        """The same spec on another channel axis (transposed conv and embedding weights need axis 1)."""
        if not self.per_channel:
            return self
        return QuantSpec(self.bits, self.signed, self.symmetric, PerChannel(axis), self.narrow_range)

    def to_dict(self) -> dict:
        return {
            "bits": self.bits,
            "signed": self.signed,
            "symmetric": self.symmetric,
            "granularity": "per_channel" if self.per_channel else "per_tensor",
            "axis": self.axis,
            "narrow_range": self.narrow_range,
        }


WEIGHT_INT8 = QuantSpec(bits=8, signed=True, symmetric=True, granularity=PerChannel(0), narrow_range=True)
WEIGHT_INT8_PER_TENSOR = QuantSpec(bits=8, signed=True, symmetric=True, granularity=PerTensor(), narrow_range=True)
ACT_INT8 = QuantSpec(bits=8, signed=True, symmetric=False, granularity=PerTensor())
