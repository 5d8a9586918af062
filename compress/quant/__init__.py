"""Quantization core: formats (QuantSpec), observers, fake quantization, and the numpy integer reference."""

from compress.quant.config import QuantConfig
from compress.quant.fake import Quantizer, QuantState, fake_quantize
from compress.quant.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
    qparams_from_range,
)
from compress.quant.spec import (
    ACT_INT8,
    WEIGHT_INT8,
    WEIGHT_INT8_PER_TENSOR,
    ObserverKind,
    PerChannel,
    PerTensor,
    QuantSpec,
)

__all__ = [
    "ACT_INT8",
    "WEIGHT_INT8",
    "WEIGHT_INT8_PER_TENSOR",
    "HistogramObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "ObserverKind",
    "PerChannel",
    "PerTensor",
    "PercentileObserver",
    "QuantConfig",
    "QuantSpec",
    "QuantState",
    "Quantizer",
    "fake_quantize",
    "make_observer",
    "qparams_from_range",
]
