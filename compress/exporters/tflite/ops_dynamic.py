"""TFLite forms of weight layers in the weight-only and dynamic modes (:class:`~compress.quant.QuantMode`).

Weight-only: the int8 weight codes are stored with their per-channel scales and a DEQUANTIZE (version 5,
per channel; LiteRT computes it once, at allocation) feeds the float CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED; input, bias and arithmetic stay float. The float handlers write the layer (their layouts,
padding, NHWC bookkeeping); only the weight constant they ask for is swapped for int8 codes + DEQUANTIZE.

Not written yet (refused by name): weight-only LSTM / GRU / attention, and every dynamic layer.
Dynamic: TFLite's dynamic-range (hybrid) kernels quantize their float input per batch row
(``asymmetric_quantize_inputs``, rounding half away from zero, range in double) where onnxruntime's
DynamicQuantizeLinear — and so the torch simulation — quantizes the whole tensor: a transformer's tokens
would each get their own scale. A dynamic layer is refused by name rather than written in an arithmetic
that differs from the simulation's.
"""

from __future__ import annotations

import numpy as np
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.numerics import weight_codes
from compress.exporters.tflite.graph import Emitter
from compress.exporters.tflite.ops import conv2d, linear
from compress.exporters.tflite.ops_shape import embedding
from compress.exporters.tflite.schema import QuantParams, TensorType
from compress.layers.dynamic import layer_mode

_DEQUANTIZE_PER_CHANNEL_VERSION = 5  # TF's op_version.cc: int8 input quantized per channel


def _dequantized_weight(em: Emitter, layer: nn.Module, name: str, laid_out: np.ndarray) -> int:
    """int8 codes of ``laid_out`` (the float handler's weight array, already in TFLite layout) + DEQUANTIZE."""
    _, scale, _ = weight_codes(layer.weight, layer.weight_quant, name)
    scale = np.asarray(scale, np.float32).reshape(-1)
    depthwise = isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups == layer.in_channels > 1
    axis = laid_out.ndim - 1 if depthwise else 0  # 1HWO for depthwise, OHWI / [out, in] otherwise
    shape = [1] * laid_out.ndim
    shape[axis] = -1
    codes = np.round(laid_out.astype(np.float64) / scale.astype(np.float64).reshape(shape))
    if np.abs(codes).max(initial=0) > 127 or not np.allclose(codes * scale.reshape(shape), laid_out, rtol=1e-6,
                                                            atol=0):
        raise ExportError(f"layer {name!r}: its weights are not on their int8 grid; run convert() before export")
    full = np.broadcast_to(scale, (laid_out.shape[axis],)) if scale.size == 1 else scale
    q = em.const(f"{name}_int8", codes.astype(np.int8), TensorType.INT8, QuantParams.per_channel(full, 0, axis))
    out = em.w.add_tensor(name, laid_out.shape, TensorType.FLOAT32)
    em.op("DEQUANTIZE", [q], [out], version=_DEQUANTIZE_PER_CHANNEL_VERSION)
    return out


def _weight_only(handler):
    """``handler`` writing the layer in float, its weight constant replaced by int8 codes + DEQUANTIZE."""

    def emit(em: Emitter, node: fx.Node) -> None:
        layer, weight_name, write_const = em.module(node), f"{node.name}_weight", em.const

        def const(name, array, dtype, quant=None):
            if name == weight_name and dtype == TensorType.FLOAT32:
                return _dequantized_weight(em, layer, name, np.asarray(array, np.float32))
            return write_const(name, array, dtype, quant)

        # The float path of the handler: float input (an int8 one is dequantized), float bias (the layer has no
        # input scale), its output quantizer (if any) written by the quantizer node itself.
        em.const, em.quantized = const, False
        try:
            handler(em, node)
        finally:
            del em.const
            em.quantized = True

    emit.__name__ = f"weight_only_{handler.__name__}"
    return emit


def _not_yet(em: Emitter, node: fx.Node) -> None:
    mode = layer_mode(em.module(node)).value
    raise ExportError(f"layer {node.target!r} is in {mode} mode, which the TFLite exporter does not write for "
                      f"{type(em.module(node)).__name__} yet; export ONNX (--format onnx), or set it static for "
                      f"TFLite (--layer-mode {node.target}=static)")


ops.register_emitter("tflite", "linear", quantized=True, mode="weight-only")(_weight_only(linear))
for _name in ("conv1d", "conv2d"):
    ops.register_emitter("tflite", _name, quantized=True, mode="weight-only")(_weight_only(conv2d))
for _name in ("linear", "conv1d", "conv2d", "lstm"):
    ops.register_emitter("tflite", _name, quantized=True, mode="dynamic")(_not_yet)
for _name in ("lstm", "gru", "multihead_attention"):  # their emitters read the static layer's quantizers
    ops.register_emitter("tflite", _name, quantized=True, mode="weight-only")(_not_yet)
# A lookup's int8 table behind a dequantize is already its weight-only form (QuantEmbedding._MODES).
ops.register_emitter("tflite", "embedding", quantized=True, mode="weight-only")(embedding)
