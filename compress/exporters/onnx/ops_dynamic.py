"""ONNX emitters of weight layers in the dynamic and weight-only modes (:class:`~compress.quant.QuantMode`).

Dynamic (the form onnxruntime's ``quantize_dynamic`` writes, so its graph optimizer fuses it into
``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` and the u8s8 integer GEMM runs):

    x ─DynamicQuantizeLinear─► (x_u8, x_scale, x_zp) ─MatMulInteger / ConvInteger (int8 weight, zp 0)─► int32
      ─Cast─► float ─Mul(x_scale × w_scale)─► ─Add(float bias)─► y

The integer product is exact, so the runtime equals the simulation (``compress.layers.dynamic``) up to float
rounding of the final scaling. Weight scales may be per output channel: the scale vector broadcasts over the
last axis (MatMul) or is shaped ``[1, C, 1...]`` (Conv).

Weight-only: int8 weights behind ``DequantizeLinear`` feeding the float op, with float input and bias: the
static conv emitter writes exactly that when a layer has no activation quantizer and no input scale, so it is
registered for this mode too; linear layers always use Gemm (see :func:`_weight_only_linear`).

LSTM: dynamic is ``com.microsoft.DynamicQuantizeLSTM`` (input sequence and every hidden state quantized at
run time), weight-only ``DequantizeLinear → LSTM``; GRU has no dynamic form in onnxruntime (weight-only);
attention is weight-only in both modes. ``ops_seq`` registers those (its emitters read the layer's mode).
"""

from __future__ import annotations

import numpy as np
from torch import fx, nn

from compress.exporters.onnx.graph import ExportContext, TensorValue, emitter
from compress.exporters.onnx.ops_quant import (
    _finish_layer,
    _quant_conv,
    _quant_embedding,
    _quant_linear,
    _weight_and_bias,
    conv_attrs,
    weight_codes,
)

_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT (onnx itself is imported only where a file is written)

emitter("conv1d", "conv2d", quantized=True, mode="weight-only")(_quant_conv)
emitter("embedding", quantized=True, mode="weight-only")(_quant_embedding)  # DQ → Gather is that form already


def rows_gemm(ctx: ExportContext, x: str, weight: str, bias: str | None, out_features: int, hint: str,
              trans_b: int = 1) -> str:
    """``x · W (+ b)`` for an input of any rank as Gemm on ``[rows, in]``, reshaped back to ``[..., out]``.

    For float inputs with DequantizeLinear'd int8 weights (weight-only): onnxruntime rewrites DQ → MatMul of an
    8-bit weight into MatMulNBits, which quantizes the *input* to int8 by default (measured: 1.5e-3 off the
    float result on a 12-wide layer); DQ → Gemm stays float, as the simulation computes.
    """
    b = ctx.b
    rows = b.node("Flatten", [x], hint, axis=-1)
    y = b.node("Gemm", [rows, weight] + ([bias] if bias else []), hint, transB=trans_b)
    lead = b.node("Slice", [b.node("Shape", [x], hint), b.int64s([0]), b.int64s([-1])], hint)
    return b.node("Reshape", [y, b.node("Concat", [lead, b.int64s([out_features])], hint, axis=0)], hint)


@emitter("linear", quantized=True, mode="weight-only")
def _weight_only_linear(ctx: ExportContext, node: fx.Node, layer: nn.Module) -> TensorValue:
    """Gemm (through :func:`rows_gemm` for inputs of rank > 2), never DQ → MatMul."""
    if ctx.rank(node.args[0]) == 2:
        return _quant_linear(ctx, node, layer)
    weight, bias = _weight_and_bias(layer)
    codes, scale, axis = weight_codes(layer, weight, node.name)
    x = ctx.tensor(node.args[0], node)
    w = ctx.b.dequantized_const(codes, scale, axis, f"{node.name}.weight")
    b = None if bias is None else ctx.b.const(_float_bias(bias), f"{node.name}.bias")
    return _finish_layer(ctx, layer, node, rows_gemm(ctx, x.name, w, b, codes.shape[0], node.name))


def _dynamic_input(ctx: ExportContext, node: fx.Node) -> tuple[str, str, str]:
    """(uint8 codes, scale, zero point) of the layer's input, computed by the runtime on every call."""
    x = ctx.tensor(node.args[0], node)
    return ctx.b.node("DynamicQuantizeLinear", [x.name], node.name, n_outputs=3)


def _rescale(ctx: ExportContext, node: fx.Node, acc: str, x_scale: str, w_scale: np.ndarray,
             bias: np.ndarray | None, channel_shape: tuple[int, ...]) -> str:
    """int32 accumulator → float: × (x_scale × w_scale), + bias (both shaped to broadcast over channels)."""
    y = ctx.b.node("Cast", [acc], node.name, to=_ONNX_FLOAT)
    w_scale = np.asarray(w_scale, np.float32)
    w_scale = w_scale.reshape(channel_shape) if w_scale.size > 1 else w_scale.reshape(())
    scale = ctx.b.node("Mul", [x_scale, ctx.b.const(w_scale, f"{node.name}.weight_scale")], node.name)
    y = ctx.b.node("Mul", [y, scale], node.name)
    if bias is not None:
        y = ctx.b.node("Add", [y, ctx.b.const(bias.astype(np.float32).reshape(channel_shape),
                                               f"{node.name}.bias")], node.name)
    return y


def _float_bias(bias) -> np.ndarray | None:
    return None if bias is None else bias.detach().float().cpu().numpy()


@emitter("linear", quantized=True, mode="dynamic")
def _dynamic_linear(ctx: ExportContext, node: fx.Node, layer: nn.Module) -> TensorValue:
    weight, bias = _weight_and_bias(layer)
    codes, scale, _ = weight_codes(layer, weight, node.name)  # per tensor, or per row (output channel)
    x_q, x_scale, x_zp = _dynamic_input(ctx, node)
    w_t = ctx.b.const(np.ascontiguousarray(codes.T), f"{node.name}.weight_t")  # [in, out]: MatMul's B
    acc = ctx.b.node("MatMulInteger", [x_q, w_t, x_zp], node.name)
    y = _rescale(ctx, node, acc, x_scale, scale, _float_bias(bias), (-1,))
    return _finish_layer(ctx, layer, node, y)


@emitter("conv1d", "conv2d", quantized=True, mode="dynamic")
def _dynamic_conv(ctx: ExportContext, node: fx.Node, layer: nn.Module) -> TensorValue:
    weight, bias = _weight_and_bias(layer)
    codes, scale, _ = weight_codes(layer, weight, node.name)
    attrs = conv_attrs(layer, node.name)
    x_q, x_scale, x_zp = _dynamic_input(ctx, node)
    # ConvInteger pads with the input's zero point, so the padding is real 0 as in the float conv.
    acc = ctx.b.node("ConvInteger", [x_q, ctx.b.const(codes, f"{node.name}.weight"), x_zp], node.name, **attrs)
    channel_shape = (1, -1) + (1,) * (codes.ndim - 2)
    y = _rescale(ctx, node, acc, x_scale, scale, _float_bias(bias), channel_shape)
    return _finish_layer(ctx, layer, node, y)
