"""TFLite forms of weight layers in the weight-only and dynamic modes (:class:`~compress.quant.QuantMode`).

Weight-only: the int8 weight codes are stored with their per-channel scales and a DEQUANTIZE (version 5,
per channel; LiteRT computes it once, at allocation) feeds the float CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED; input, bias and arithmetic stay float. The float handlers write the layer (their layouts,
padding, NHWC bookkeeping); only the weight constant they ask for is swapped for int8 codes + DEQUANTIZE.

Dynamic: LiteRT's dynamic-range (hybrid) kernels — float input, int8 per-channel weight codes (the
simulation's), float bias, float output; the kernel quantizes its input to int8 on every call.

* Linear → FULLY_CONNECTED with ``asymmetric_quantize_inputs`` (version 12, as TF's op_version.cc numbers a
  per-channel hybrid FC). The input is quantized *per row*: each token of a transformer gets its own scale and
  zero point (rounding half away from zero, range in double), where onnxruntime's DynamicQuantizeLinear —
  and so the torch simulation — quantizes the whole tensor to uint8, half to even. The file computes a
  finer-grained arithmetic than the simulation (zoo bert: 1 % of the output's range per layer).
* Conv2d / Conv1d → CONV_2D (version 5; 6 grouped) / DEPTHWISE_CONV_2D (version 6), the float handler's
  layout and padding with the weight swapped for int8 codes. The input is quantized per *image* (batch
  element), asymmetric: with the files' batch of 1 that is the simulation's per-tensor grid (measured
  ≤ 3e-7 of the output's range, XNNPACK and LiteRT's builtin kernels alike). XNNPACK delegates the hybrid
  CONV_2D; the hybrid DEPTHWISE_CONV_2D runs on LiteRT's builtin kernel (one more partition). Per-tensor
  weights on a non-depthwise conv are refused: LiteRT's builtin kernel then takes its symmetric path (0.9 %
  off) while XNNPACK stays asymmetric.

:mod:`compress.exporters.tflite.verify_dynamic` checks each hybrid op against a numpy reference of LiteRT's
arithmetic and reports its difference from the simulation as information.

Weight-only ``nn.MultiheadAttention`` (also what ``--mode dynamic`` gives attention, as in ONNX): the
attention handler's float decomposition with its four projection weights as int8 codes + DEQUANTIZE.

LSTM → one UNIDIRECTIONAL_SEQUENCE_LSTM per layer in LiteRT's hybrid form, the static int8 LSTM's op
(:func:`compress.exporters.tflite.ops_seq.fused_lstm`): int8 gate matrices (one scale each: every gate block of
the layer's per-row codes re-coded on its largest row scale), float bias, gates and cell; every step quantizes
its input and the previous hidden state per batch row, asymmetric. The dynamic simulation
(onnxruntime's DynamicQuantizeLSTM) quantizes the whole input sequence at once and the hidden state per step as
one uint8 tensor, so the two differ by the input-quantization granularity (and the gate re-coding); the
verification checks the op against a numpy model of the kernel and reports the simulation's difference as
information. An initial state, a read final state or a bidirectional layer has no fused form (the kernel
keeps h and c to itself and runs one direction): refused by name, with the fix.

Not written (refused by name, with the fix): weight-only LSTM / GRU.
"""

from __future__ import annotations

import numpy as np
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.numerics import weight_codes
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import ACT_CODE, Emitter
from compress.exporters.tflite.ops import conv2d, linear
from compress.exporters.tflite.ops_base import _finish, _float_params, _meta_shape, int8_weight
from compress.exporters.tflite.ops_seq import _fusable_lstm, fused_lstm, multihead_attention
from compress.exporters.tflite.ops_shape import embedding
from compress.exporters.tflite.schema import Options, QuantParams, TensorType
from compress.layers.dynamic import layer_mode

_DEQUANTIZE_PER_CHANNEL_VERSION = 5  # TF's op_version.cc: int8 input quantized per channel
_HYBRID_FC_PER_CHANNEL_VERSION = 12  # TF's op_version.cc: float input, int8 weights quantized per channel


def _int8_const(em: Emitter, weight, quantizer, name: str, laid_out: np.ndarray, axis: int) -> int:
    """The int8 codes of ``laid_out`` (the float handler's weight array, already in TFLite layout, on the grid
    of ``quantizer``, channels on ``axis``) as a constant with per-channel scales."""
    _, scale, _ = weight_codes(weight, quantizer, name)
    scale = np.asarray(scale, np.float32).reshape(-1)
    shape = [1] * laid_out.ndim
    shape[axis] = -1
    codes = np.round(laid_out.astype(np.float64) / scale.astype(np.float64).reshape(shape))
    if np.abs(codes).max(initial=0) > 127 or not np.allclose(codes * scale.reshape(shape), laid_out, rtol=1e-6,
                                                            atol=0):
        raise ExportError(f"layer {name!r}: its weights are not on their int8 grid; run convert() before export")
    full = np.broadcast_to(scale, (laid_out.shape[axis],)) if scale.size == 1 else scale
    return em.const(f"{name}_int8", codes.astype(np.int8), TensorType.INT8, QuantParams.per_channel(full, 0, axis))


def _int8_weight(em: Emitter, layer: nn.Module, name: str, laid_out: np.ndarray) -> int:
    """:func:`_int8_const` of a conv / linear layer's weight (a depthwise filter is 1HWO: channels last)."""
    depthwise = isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups == layer.in_channels > 1
    axis = laid_out.ndim - 1 if depthwise else 0  # 1HWO for depthwise, OHWI / [out, in] otherwise
    return _int8_const(em, layer.weight, layer.weight_quant, name, laid_out, axis)


def _dequantized(em: Emitter, q: int, name: str, shape) -> int:
    out = em.w.add_tensor(name, shape, TensorType.FLOAT32)
    em.op("DEQUANTIZE", [q], [out], version=_DEQUANTIZE_PER_CHANNEL_VERSION)
    return out


def _dequantized_weight(em: Emitter, layer: nn.Module, name: str, laid_out: np.ndarray) -> int:
    """int8 codes of ``laid_out`` + DEQUANTIZE to float (weight-only)."""
    return _dequantized(em, _int8_weight(em, layer, name, laid_out), name, laid_out.shape)


def _with_int8_weight(handler, weight, prefix: str, versions: dict[str, int] | None = None):
    """``handler`` writing the layer in float, its weight constant replaced by ``weight(em, layer, name,
    laid_out)`` (int8 codes, behind a DEQUANTIZE or read by a hybrid kernel); ``versions`` renumbers the
    handler's operators (a hybrid kernel's version differs from the float one's)."""

    def emit(em: Emitter, node: fx.Node) -> None:
        layer, weight_name, write_const, write_op = em.module(node), f"{node.name}_weight", em.const, em.op

        def const(name, array, dtype, quant=None):
            if name == weight_name and dtype == TensorType.FLOAT32:
                return weight(em, layer, name, np.asarray(array, np.float32))
            return write_const(name, array, dtype, quant)

        def op(op_name, inputs, outputs, options=None, version=1):
            version = max(version, (versions or {}).get(op_name, version))
            return write_op(op_name, inputs, outputs, options, version)

        # The float path of the handler: float input (an int8 one is dequantized), float bias (the layer has no
        # input scale), its output quantizer (if any) written by the quantizer node itself.
        em.const, em.op, em.quantized = const, op, False
        try:
            handler(em, node)
        finally:
            del em.const, em.op
            em.quantized = True

    emit.__name__ = f"{prefix}_{handler.__name__}"
    return emit


def _weight_only(handler):
    """``handler`` writing the layer in float, its weight constant replaced by int8 codes + DEQUANTIZE."""
    return _with_int8_weight(handler, _dequantized_weight, "weight_only")


#: Hybrid convolutions: float input and output, int8 weights per output channel, as TF's op_version.cc numbers
#: them (CONV_2D 5; 6, grouped, is what the float handler already writes; DEPTHWISE_CONV_2D 6).
_HYBRID_CONV_VERSIONS = {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 6}
_hybrid_conv = _with_int8_weight(conv2d, _int8_weight, "dynamic", _HYBRID_CONV_VERSIONS)


def dynamic_conv(em: Emitter, node: fx.Node) -> None:
    """A dynamic-mode Conv1d / Conv2d as LiteRT's hybrid CONV_2D / DEPTHWISE_CONV_2D (see the module docstring).

    Raises:
        ExportError: per-tensor weights on a non-depthwise conv (LiteRT's builtin kernel then switches to
            symmetric input quantization while XNNPACK stays asymmetric: the file would compute differently
            on different devices).
    """
    layer = em.module(node)
    _, scale, _ = weight_codes(layer.weight, layer.weight_quant, node.name)
    depthwise = layer.groups == layer.in_channels > 1
    if np.asarray(scale).size == 1 and not depthwise:
        raise ExportError(f"layer {node.target!r} is a dynamic conv with one weight scale per tensor, which LiteRT's "
                          "builtin CONV_2D quantizes symmetrically and XNNPACK asymmetrically; quantize its weights "
                          f"per channel (drop --per-tensor), or --layer-mode {node.target}=weight-only")
    _hybrid_conv(em, node)


def dynamic_linear(em: Emitter, node: fx.Node) -> None:
    """A dynamic-mode Linear as LiteRT's hybrid FULLY_CONNECTED (see the module docstring).

    The input is float whatever precedes it (an int8 value is dequantized: the kernel quantizes it again, per
    row); a ReLU / ReLU6 that follows is fused; a static quantizer that follows gets its QUANTIZE after the
    float output.
    """
    mod = em.module(node)
    x = em.to_float(em.value(node.args[0]))
    _, _, act, last, absorbed = _float_params(em, node, mod)
    plan = em.plan_output(last, act)
    codes, w_scale = int8_weight(mod.weight, mod.weight_quant, node.name)
    cols = x.col_perm  # after an NHWC flatten, TFLite column j holds torch feature cols[j]
    if cols is not None:
        codes = codes[:, cols]
    else:
        x = em.torch_order(x)
    w_t = em.const(f"{node.name}_weight", np.ascontiguousarray(codes), TensorType.INT8,
                   QuantParams.per_channel(w_scale, 0, 0))
    bias = mod.quantized_bias()  # the float bias: a dynamic layer has no input scale, no int32 grid
    bias = np.zeros(codes.shape[0], np.float32) if bias is None else bias.detach().float().cpu().numpy()
    b_t = em.const(f"{node.name}_bias", bias, TensorType.FLOAT32)
    out_shape = _meta_shape(last)
    keep = len(out_shape) > 2
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), TensorType.FLOAT32)
    # Asymmetric: per-row zero points as well as scales (the symmetric form wastes half the grid on a
    # one-sided input such as a GELU's output).
    em.op("FULLY_CONNECTED", [x.tensor, w_t, b_t], [out.tensor],
          Options("FullyConnectedOptions", {"FusedActivationFunction": ACT_CODE[plan.act], "KeepNumDims": keep,
                                            "AsymmetricQuantizeInputs": True}),
          _HYBRID_FC_PER_CHANNEL_VERSION)
    _finish(em, node, out, plan, absorbed)


def weight_only_attention(em: Emitter, node: fx.Node) -> None:
    """``nn.MultiheadAttention`` in weight-only mode: the attention handler's float decomposition (a weight-only
    layer has no activation quantizer, so it writes no QUANTIZE → DEQUANTIZE), its q / k / v / output
    projection weights stored as int8 codes + DEQUANTIZE (per output channel, as the simulation holds them).

    Raises:
        ExportError: the handler asked for other weight constants than the four projections (a renamed
            constant would otherwise be stored in float without a word).
    """
    mod = em.module(node)
    # The simulation's q / k / v weights (on their grid already: their codes are the same) with their quantizers.
    wanted = {f"{node.name}_{p}_weight": (w, mod.weight_quants[n])
              for p, (n, w) in zip("qkv", mod.quantized_weights().items(), strict=True)}
    wanted[f"{node.name}_out_weight"] = (mod.out_proj.weight, mod.out_proj.weight_quant)
    write_const, written = em.const, set()

    def const(name, array, dtype, quant=None):
        if name in wanted and dtype == TensorType.FLOAT32:
            written.add(name)
            laid_out = np.asarray(array, np.float32)
            return _dequantized(em, _int8_const(em, *wanted[name], name, laid_out, 0), name, laid_out.shape)
        return write_const(name, array, dtype, quant)

    em.const = const
    try:
        multihead_attention(em, node)
    finally:
        del em.const
    if written != set(wanted):
        raise ExportError(f"layer {node.target!r}: the attention handler wrote no {sorted(set(wanted) - written)}; "
                          "the weight-only form cannot store them as int8 (report this), or --layer-mode "
                          f"{node.target}=static")


def dynamic_lstm(em: Emitter, node: fx.Node) -> None:
    """A dynamic-mode LSTM as the fused hybrid UNIDIRECTIONAL_SEQUENCE_LSTM (see the module docstring).

    Raises:
        ExportError: the layer is bidirectional, is given an initial state or has its final state read
            (the fused kernel runs one direction from a zero state and returns only the hidden sequence).
    """
    mod = em.module(node)
    hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
    if not _fusable_lstm(em, mod, node, hx):
        why = ("is bidirectional" if mod.bidirectional else "has a projection (proj_size)"
               if getattr(mod, "proj_size", 0) else "is given an initial state" if hx is not None
               else "has its final state (h_n, c_n) read")
        fix = ("a unidirectional LSTM" if mod.bidirectional or getattr(mod, "proj_size", 0) else
               f"--layer-mode {node.target}=static (the unrolled int8 form)")
        raise ExportError(f"layer {node.target!r} is a dynamic LSTM that {why}, which LiteRT's fused hybrid LSTM "
                          f"cannot compute; export ONNX (--format onnx), or use {fix} for TFLite")
    fused_lstm(em, node)


def _not_yet(em: Emitter, node: fx.Node) -> None:
    mode = layer_mode(em.module(node)).value
    raise ExportError(f"layer {node.target!r} is in {mode} mode, which the TFLite exporter does not write for "
                      f"{type(em.module(node)).__name__} yet; export ONNX (--format onnx), or set it static for "
                      f"TFLite (--layer-mode {node.target}=static)")


ops.register_emitter("tflite", "linear", quantized=True, mode="weight-only")(_weight_only(linear))
for _name in ("conv1d", "conv2d"):
    ops.register_emitter("tflite", _name, quantized=True, mode="weight-only")(_weight_only(conv2d))
ops.register_emitter("tflite", "linear", quantized=True, mode="dynamic")(dynamic_linear)
for _name in ("conv1d", "conv2d"):
    ops.register_emitter("tflite", _name, quantized=True, mode="dynamic")(dynamic_conv)
ops.register_emitter("tflite", "lstm", quantized=True, mode="dynamic")(dynamic_lstm)
for _name in ("lstm", "gru"):  # their emitters read the static layer's quantizers
    ops.register_emitter("tflite", _name, quantized=True, mode="weight-only")(_not_yet)
ops.register_emitter("tflite", "multihead_attention", quantized=True, mode="weight-only")(weight_only_attention)
# A lookup's int8 table behind a dequantize is already its weight-only form (QuantEmbedding._MODES).
ops.register_emitter("tflite", "embedding", quantized=True, mode="weight-only")(embedding)
