"""TFLite forms of weight layers in the dynamic and weight-only modes (:class:`~compress.quant.QuantMode`).

Not written yet: TFLite's dynamic-range (hybrid) FULLY_CONNECTED / CONV_2D quantize their float input per
batch row (``asymmetric_quantize_inputs``), where onnxruntime's DynamicQuantizeLinear — and so the torch
simulation — quantizes per tensor, and a weight-only layer needs its int8 weights behind a DEQUANTIZE. Until
they are written, a layer in these modes is refused by name here, so the static emitters never write it
silently in another arithmetic than the simulation's.
"""

from __future__ import annotations

from torch import fx

from compress import ops
from compress.errors import ExportError
from compress.exporters.tflite.graph import Emitter
from compress.exporters.tflite.ops_shape import embedding
from compress.layers.dynamic import layer_mode


def _not_yet(em: Emitter, node: fx.Node) -> None:
    mode = layer_mode(em.module(node)).value
    raise ExportError(f"layer {node.target!r} is in {mode} mode, which the TFLite exporter does not write yet; "
                      f"export ONNX (--format onnx), or set it static for TFLite (--layer-mode {node.target}=static)")


for _mode in ("dynamic", "weight-only"):
    for _name in ("linear", "conv1d", "conv2d", "lstm", "gru"):
        ops.register_emitter("tflite", _name, quantized=True, mode=_mode)(_not_yet)

# A lookup's int8 table behind a dequantize is already its weight-only form (QuantEmbedding._MODES).
ops.register_emitter("tflite", "embedding", quantized=True, mode="weight-only")(embedding)
