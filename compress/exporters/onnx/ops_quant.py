"""ONNX emitters, quantized part: activation quantizers, quant conv / linear / embedding layers.

Numerics contract (DESIGN.md): weights are int8 initializers behind ``DequantizeLinear`` (axis 0 per output
channel, or per tensor); the bias is an int32 initializer with scale ``input_scale × weight_scale`` and zero
point 0 behind ``DequantizeLinear``; an activation quantizer becomes ``QuantizeLinear → DequantizeLinear``
in uint8 (zero point + 128, the same grid) or int8. Integer codes are derived from the layer's own
fake-quantized tensors, so the ONNX graph holds exactly the values the torch simulation computes with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters import numerics
from compress.exporters.onnx.graph import ExportContext, QParams, TensorValue, emitter
from compress.exporters.onnx.ops_tensor import pad_into_conv
from compress.layers.activation import QuantOutputMixin
from compress.layers.base import FusedActivation, QuantLayerMixin
from compress.layers.elementwise import QuantAdd, QuantCat, QuantMatmul, QuantMul, _QuantElementwise
from compress.quant.fake import Quantizer, QuantState

# Tolerance when checking that a layer's recorded input scale is its input quantizer's scale.
_SCALE_RTOL = 1e-6


def quantizer_qparams(q: Quantizer, unsigned: bool, where: str) -> QParams:
    """The ONNX (scale, zero point) of an activation quantizer, in uint8 or int8 storage."""
    if q.state is QuantState.OBSERVING:
        raise ExportError(f"quantizer {where!r} has not been calibrated (still observing); "
                          "run calibrate() and convert() before exporting")
    spec = q.spec
    if spec.per_channel:
        raise ExportError(f"quantizer {where!r} is per-channel; ONNX activations are quantized per tensor, "
                          "use a PerTensor() activation spec")
    if spec.qmax - spec.qmin != 255:
        raise ExportError(
            f"quantizer {where!r} uses codes [{spec.qmin}, {spec.qmax}] but QuantizeLinear clamps to a full "
            "8-bit range; use an 8-bit activation spec without narrow_range"
        )
    scale = q.scale.detach()
    if q.learnable and q.state is not QuantState.FROZEN:
        scale = scale.abs().clamp(min=1e-8)  # what Quantizer.forward uses for a learnable scale
    zp = int(q.zero_point.reshape(()).item())
    storage_min = 0 if unsigned else -128
    return QParams(float(scale.reshape(()).float().item()), zp - spec.qmin + storage_min, unsigned, zp)


def clamp_implied(ctx: ExportContext, node: fx.Node, lo: float, hi: float | None,
                  quantizer: Quantizer | None = None) -> bool:
    """Whether clamping to [lo, hi] is a no-op because the next quantizer's code range already does it.

    True when ``node``'s only consumer (or the given ``quantizer``) has its zero point at the minimum code
    (real 0 is the lowest value it can represent) and, for an upper bound, its largest value is ≤ hi.
    """
    if lo != 0:
        return False
    if quantizer is None and node.op == "call_module":
        # A wrapper layer (QuantReLU...) quantizes its own output: that quantizer is the next clamp.
        quantizer = getattr(ctx.module(node), "output_quant", None)
    if quantizer is None:
        user = ctx.sole_user(node)
        if user is None or user.op != "call_module":
            return False
        quantizer = ctx.module(user)
        if not isinstance(quantizer, Quantizer) or quantizer.state is QuantState.OBSERVING:
            return False
    qp = quantizer_qparams(quantizer, ctx.unsigned, node.name)
    if qp.zero_point != qp.qmin:
        return False
    return hi is None or (qp.qmax - qp.zero_point) * qp.scale <= hi * (1 + 1e-7)


def apply_quantizer(ctx: ExportContext, x: TensorValue, q: Quantizer, hint: str) -> TensorValue:
    qp = quantizer_qparams(q, ctx.unsigned, hint)
    if qp.same_grid(x.qparams):
        return x  # already on exactly this grid: Q→DQ would be the identity
    return ctx.b.quantize_dequantize(x.name, qp, hint)


@emitter("quantize", quantized=True)
def _quantizer(ctx: ExportContext, node: fx.Node, q: Quantizer):
    if writes_int8_constant(ctx, node):
        return _quantized_constant(ctx, node, q, _attr(ctx.gm, node.args[0].target))
    return apply_quantizer(ctx, ctx.tensor(node.args[0], node), q, node.name)


def writes_int8_constant(ctx: ExportContext, node: fx.Node) -> bool:
    """Whether ``node`` is a per-tensor 8-bit quantizer of a stored tensor, written as that tensor's codes."""
    q = ctx.module(node) if node.op == "call_module" else None
    src = node.args[0] if node.args else None
    return isinstance(q, Quantizer) and isinstance(src, fx.Node) and src.op == "get_attr" and \
        q.spec.bits == 8 and not q.spec.per_channel


def _attr(root: nn.Module, target: str) -> torch.Tensor:
    for part in target.split("."):
        root = getattr(root, part)
    return root


def _quantized_constant(ctx: ExportContext, node: fx.Node, q: Quantizer, value: torch.Tensor) -> TensorValue:
    """A quantizer on a stored tensor (prepare's int8 constants): its codes as an initializer behind
    DequantizeLinear, 1 byte per element instead of 4; in the activations' storage type (uint8: codes + 128, the
    same values), so onnxruntime's QDQ fusion sees matching operand types (QLinearAdd / QLinearMul)."""
    if q.state is QuantState.OBSERVING:
        raise ExportError(f"quantizer {node.name!r} has not been calibrated (still observing); "
                          "run calibrate() and convert() before exporting")
    with torch.no_grad():
        scale = float(q.scale.reshape(()))
        zp = int(q.zero_point.reshape(()))
        codes = torch.round(q(value.detach().float()) / scale) + zp  # read back from the simulation: exact
    shift = (0 if ctx.unsigned else -128) - (-128 if q.spec.signed else 0)
    dtype = np.uint8 if ctx.unsigned else np.int8
    stored = (codes.to(torch.int32) + shift).numpy().astype(dtype)
    qp = QParams(scale, zp + shift, ctx.unsigned, zp)
    name = ctx.b.node("DequantizeLinear", [ctx.b.const(stored, f"{node.name}_quantized"),
                                           *ctx.b.qparam_consts(qp)], node.name)
    return TensorValue(name, qp)


# -- weights and bias -----------------------------------------------------------------------------------
def weight_codes(layer: nn.Module, weight: torch.Tensor, where: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(int8 codes, float32 scale [] or [C], per-channel axis or None) of the layer's quantized weight."""
    return numerics.weight_codes(weight, getattr(layer, "weight_quant", None), f"layer {where}")


def _bias_value(ctx: ExportContext, layer: nn.Module, bias: torch.Tensor | None, x: TensorValue,
                where: str, dequantized: bool = False) -> str | None:
    """int32 bias behind DequantizeLinear (scale input_scale × weight_scale), or float when no scale is known.

    ``dequantized``: write the float32 values that DequantizeLinear would compute (codes × scale, the same
    single float multiply) instead: for a bias added by a separate Add, which onnxruntime runs in float
    anyway; the int32 codes then need no scale vector and no DequantizeLinear beside them (the zoo BERT's
    file: 8 kB, 2 % of its fp32 size).
    """
    if bias is None:
        return None
    in_scale = layer.known_input_scale()
    if in_scale is None:
        return ctx.b.const(bias.detach().float().numpy(), f"{where}.bias")
    in_scale = in_scale.detach().reshape(()).float()
    if x.qparams is not None and abs(x.qparams.scale - float(in_scale)) > _SCALE_RTOL * float(in_scale):
        raise ExportError(
            f"layer {where!r} snaps its bias with input scale {float(in_scale):.6g} but its input is quantized "
            f"with scale {x.qparams.scale:.6g}; re-run convert() so input_scale matches the upstream quantizer"
        )
    # The arithmetic the layer's forward snaps its bias with (compress.quant.numerics): the simulation's codes.
    codes, scale = numerics.bias_codes(bias, in_scale, layer.weight_quant.scale.detach())
    scale = scale.float().numpy()
    if scale.ndim == 1 and scale.shape[0] != codes.shape[0]:
        scale = np.broadcast_to(scale, codes.shape).copy()
    if dequantized:
        return ctx.b.const(codes.numpy().astype(np.float32) * scale.astype(np.float32), f"{where}.bias")
    return ctx.b.dequantized_const(codes.numpy(), scale, 0, f"{where}.bias")


def _weight_and_bias(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    # QuantConvBn2d (un-converted QAT model): export the BN-folded conv its eval forward computes.
    if hasattr(layer, "folded"):
        return layer.folded()
    return layer.weight, layer.bias


def _quant_input(ctx: ExportContext, layer: nn.Module, node: fx.Node) -> TensorValue:
    x = ctx.tensor(node.args[0], node)
    if getattr(layer, "input_quant", None) is not None:
        x = apply_quantizer(ctx, x, layer.input_quant, f"{node.name}.input_quant")
    return x


def _finish_layer(ctx: ExportContext, layer: nn.Module, node: fx.Node, y: str) -> TensorValue:
    """Fused activation (unless the next quantizer's clamp implies it), then the layer's own output quantizer."""
    out_q = getattr(layer, "output_quant", None)
    act = getattr(layer, "activation", FusedActivation.NONE)
    if act is FusedActivation.RELU and not clamp_implied(ctx, node, 0.0, None, out_q):
        y = ctx.b.node("Relu", [y], node.name)
    elif act is FusedActivation.RELU6 and not clamp_implied(ctx, node, 0.0, 6.0, out_q):
        y = ctx.b.node("Clip", [y, ctx.b.scalar(0.0, np.float32), ctx.b.scalar(6.0, np.float32)], node.name)
    out = TensorValue(y)
    if out_q is not None:
        out = apply_quantizer(ctx, out, out_q, f"{node.name}.output_quant")
    return out


# -- layers ---------------------------------------------------------------------------------------------
def conv_attrs(mod: nn.Module, where: str, extra_pads: list[int] | None = None) -> dict:
    """Conv attributes; ``extra_pads``: a zero pad folded into this conv (:func:`pad_into_conv`)."""
    if mod.padding_mode != "zeros":
        raise ExportError(f"conv {where!r} uses padding_mode={mod.padding_mode!r}; only 'zeros' is exported, "
                          "pad explicitly with F.pad in the model instead")
    k, d = list(mod.kernel_size), list(mod.dilation)
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            begin = end = [0] * len(k)
        else:  # "same": torch puts the odd extra padding at the end
            total = [di * (ki - 1) for di, ki in zip(d, k, strict=True)]
            begin = [t // 2 for t in total]
            end = [t - b for t, b in zip(total, begin, strict=True)]
    else:
        begin = end = list(mod.padding)
    pads = list(begin) + list(end)
    if extra_pads is not None:
        pads = [int(p) + int(e) for p, e in zip(pads, extra_pads, strict=True)]
    return dict(kernel_shape=k, strides=list(mod.stride), pads=pads, dilations=d, group=mod.groups)


# A quantized stride-1 2-D conv reading at most this many input channels, with at most this many kernel taps,
# is written as im2col + a 1 × 1 conv (:func:`narrow_conv_input`).
NARROW_CHANNELS = 4
_MAX_TAPS = 9


def narrow_conv_input(ctx: ExportContext, src: fx.Node, x: TensorValue, codes: np.ndarray, attrs: dict,
                      hint: str) -> tuple[TensorValue, np.ndarray, dict]:
    """(input, weight codes, attributes) of an equal 1 × 1 conv over the patches of a stride-1 conv that reads
    few channels (an image's 1 or 3), or the arguments unchanged when the rewrite does not apply.

    Why: onnxruntime's QLinearConv gathers each output pixel's patch tap by tap, one small copy of ``Cin``
    bytes per tap, and with 1-3 channels that is nearly all it does: the zoo MNIST stem (1 → 8 channels,
    3 × 3) took 1.3 ms int8 against 0.09 ms fp32 at batch 32 (padding Cin to 4 or 8 with zero channels did not
    change it: the count of copies is the cost). Here the patches are strided Slices of the int8 codes, one per
    tap, concatenated on the channel axis (Q → [Pad] → Slice × kh·kw → Concat → DQ → Conv 1 × 1), which
    onnxruntime runs as uint8 copies and a pointwise QLinearConv: the zoo MNIST CNN's whole-model int8/fp32
    went 1.47 → 1.08 at batch 8 and 1.49 → 0.98 at batch 32 (1 thread, Intel Xeon, load 4-5). Strided stems
    are left alone: on the zoo's 3 × 3 / stride 2 (EfficientNet) and 7 × 7 / stride 2 (ResNet) stems, im2col
    or space-to-depth slices measured slower than the plain conv. Only uint8 activations: with int8 ones
    onnxruntime (x86) converts a Q → DQ pair to uint8 only when the two are adjacent, and the int8 patches then
    left the stem in float.

    Exact: each output is the same sum of the same int8 products (padding is the zero point, real 0, as
    QLinearConv pads), with the same per-channel weight scales and int32 bias; tests compare the outputs with
    the plain conv's in onnxruntime.
    """
    dq = ctx.b.producer(x.name) if x.qparams is not None else None
    if (codes.ndim != 4 or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3
            or not x.qparams.unsigned or attrs["group"] != 1 or any(d != 1 for d in attrs["dilations"]) or attrs["strides"] != [1, 1]):
        return x, codes, attrs
    (_, cin, h, w), (kh, kw) = ctx.shape(src), attrs["kernel_shape"]
    if cin > NARROW_CHANNELS or not 1 < kh * kw <= _MAX_TAPS or {2, 3} & ctx.dyn_dims(src):
        return x, codes, attrs
    top, left, bottom, right = attrs["pads"]
    out_h, out_w = h + top + bottom - kh + 1, w + left + right - kw + 1
    src_codes = dq.input[0]
    if any(attrs["pads"]):
        pads = ctx.b.int64s([0, 0, top, left, 0, 0, bottom, right])
        src_codes = ctx.b.node("Pad", [src_codes, pads, dq.input[2]], hint, mode="constant")
    axes = ctx.b.int64s([2, 3])
    taps = [ctx.b.node("Slice", [src_codes, ctx.b.int64s([i, j]), ctx.b.int64s([i + out_h, j + out_w]), axes], hint)
            for i in range(kh) for j in range(kw)]
    patches = ctx.b.node("Concat", taps, hint, axis=1)
    x2 = TensorValue(ctx.b.node("DequantizeLinear", [patches, *dq.input[1:]], hint), x.qparams)
    # The input's own DequantizeLinear goes when this conv was its one reader (its QuantizeLinear stays: that
    # is the codes op-by-op verification reads).
    if getattr(ctx.env.get(src), "name", None) != x.name or ctx.sole_user(src) is not None:
        if not any(x.name in n.input for n in ctx.b.nodes):
            ctx.b.nodes.remove(dq)
    # Channel (i·kw + j)·Cin + c of the patches is channel c at tap (i, j).
    codes2 = np.ascontiguousarray(codes.transpose(0, 2, 3, 1).reshape(codes.shape[0], kh * kw * cin, 1, 1))
    return x2, codes2, dict(attrs, kernel_shape=[1, 1], pads=[0, 0, 0, 0])


# Whether a quantized conv's kernel loses the taps that only ever read padding (:func:`crop_padding_taps`).
CROP_PADDING_TAPS = True


def crop_padding_taps(ctx: ExportContext, src: fx.Node, codes: np.ndarray, attrs: dict) -> tuple[np.ndarray, dict]:
    """(weight codes, attributes) of the conv without the kernel taps that read only padding at every output
    position, or the arguments unchanged.

    Why: a 3 × 3 / pad 1 conv over a 1 × 1 map (the last stage of a ResNet on 32 × 32 images) reads real input
    at its centre tap only; onnxruntime's QLinearConv still gathers all nine. Cropped to 1 × 1 (and a 3 × 3 /
    stride 2 conv over 2 × 2 to 2 × 2) the zoo ResNet's int8/fp32 went 1.35 → 1.28 at batch 1 and 1.21 → 1.17
    at batch 8 (1 thread, Intel Xeon, load 3, 9 interleaved rounds), and its file lost 8 of every 9 bytes of
    that weight. Exact: the dropped taps multiply the zero point (real 0) alone, as QLinearConv pads.

    Example (a 3-tap kernel over one input position, pad 1 each side: only the middle tap reads input):
        >>> ctx = type("Ctx", (), {"shape": lambda self, n: (1, 2, 1), "dyn_dims": lambda self, n: {0}})()
        >>> attrs = dict(kernel_shape=[3], strides=[1], pads=[1, 1], dilations=[1], group=1)
        >>> codes, attrs = crop_padding_taps(ctx, None, np.arange(12, dtype=np.int8).reshape(2, 2, 3), attrs)
        >>> codes[..., 0].tolist(), attrs["kernel_shape"], attrs["pads"]
        ([[1, 4], [7, 10]], [1], [0, 0])
    """
    spatial = codes.ndim - 2
    shape = ctx.shape(src)
    if not CROP_PADDING_TAPS or spatial < 1 or set(range(2, 2 + spatial)) & ctx.dyn_dims(src):
        return codes, attrs
    kernel, begins, ends, crop = [], [], [], []
    for ax in range(spatial):
        n, k, s, d = shape[2 + ax], attrs["kernel_shape"][ax], attrs["strides"][ax], attrs["dilations"][ax]
        p0, p1 = attrs["pads"][ax], attrs["pads"][spatial + ax]
        out = (n + p0 + p1 - d * (k - 1) - 1) // s + 1
        used = [a for a in range(k) if any(0 <= s * h + a * d - p0 < n for h in range(out))]
        if not used:
            return codes, attrs
        a0, a1 = used[0], used[-1]
        q0 = p0 - a0 * d  # the cropped kernel starts a0 taps later
        q1 = (out - 1) * s + (a1 - a0) * d + 1 - n - q0  # the end pad that keeps the output size
        if q0 < 0 or q1 < 0:
            return codes, attrs
        kernel.append(a1 - a0 + 1)
        begins.append(q0)
        ends.append(q1)
        crop.append(slice(a0, a1 + 1))
    if kernel == list(attrs["kernel_shape"]):
        return codes, attrs
    codes = np.ascontiguousarray(codes[(slice(None), slice(None), *crop)])
    return codes, dict(attrs, kernel_shape=kernel, pads=begins + ends)


@emitter("conv1d", "conv2d", quantized=True)
def _quant_conv(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    x = _quant_input(ctx, layer, node)
    weight, bias = _weight_and_bias(layer)
    codes, scale, axis = weight_codes(layer, weight, node.name)
    attrs = conv_attrs(layer, node.name, pad_into_conv(ctx, node.args[0]))
    codes, attrs = crop_padding_taps(ctx, node.args[0], codes, attrs)
    x, codes, attrs = narrow_conv_input(ctx, node.args[0], x, codes, attrs, node.name)
    w = ctx.b.dequantized_const(codes, scale, axis, f"{node.name}.weight")
    b = _bias_value(ctx, layer, bias, x, node.name)
    y = ctx.b.node("Conv", [x.name, w] + ([b] if b else []), node.name, **attrs)
    return _finish_layer(ctx, layer, node, y)


def emit_linear(ctx: ExportContext, node: fx.Node, x: TensorValue, weight_for, bias: str | None) -> str:
    """Gemm for 2-D inputs (weight [out, in], transB=1), MatMul (+ Add) otherwise (weight [in, out])."""
    if ctx.rank(node.args[0]) == 2:
        return ctx.b.node("Gemm", [x.name, weight_for(False)] + ([bias] if bias else []), node.name, transB=1)
    y = ctx.b.node("MatMul", [x.name, weight_for(True)], node.name)
    return ctx.b.node("Add", [y, bias], node.name) if bias else y


@emitter("linear", quantized=True)
def _quant_linear(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    x = _quant_input(ctx, layer, node)
    weight, bias = _weight_and_bias(layer)
    codes, scale, axis = weight_codes(layer, weight, node.name)

    def weight_for(transposed: bool) -> str:
        if not transposed:
            return ctx.b.dequantized_const(codes, scale, axis, f"{node.name}.weight")
        return ctx.b.dequantized_const(np.ascontiguousarray(codes.T), scale, None if axis is None else 1 - axis,
                                       f"{node.name}.weight_t")

    # Gemm (2-D) takes the int32 bias itself (onnxruntime's QGemm fusion reads it); MatMul's bias is an Add.
    as_add = ctx.rank(node.args[0]) != 2
    y = emit_linear(ctx, node, x, weight_for, _bias_value(ctx, layer, bias, x, node.name, dequantized=as_add))
    return _finish_layer(ctx, layer, node, y)


def emit_embedding(ctx: ExportContext, node: fx.Node, mod: nn.Module, weight: str) -> TensorValue:
    if mod.max_norm is not None:
        raise ExportError(f"embedding {node.name!r} uses max_norm, which renormalises weights at run time; "
                          "export it with max_norm=None")
    idx = ctx.tensor(node.args[0], node)
    return TensorValue(ctx.b.node("Gather", [weight, idx.name], node.name, axis=0))


@emitter("embedding", quantized=True)
def _quant_embedding(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    codes, scale, axis = weight_codes(layer, layer.weight, node.name)
    w = ctx.b.dequantized_const(codes, scale, axis, f"{node.name}.weight")
    out = emit_embedding(ctx, node, layer, w)
    out_q = getattr(layer, "output_quant", None)
    return apply_quantizer(ctx, out, out_q, f"{node.name}.output_quant") if out_q is not None else out


def is_quant_module(mod: nn.Module) -> bool:
    """A compress quant layer or quantizer: written by a quantized emitter, never by its float op's."""
    return isinstance(mod, QuantLayerMixin | QuantOutputMixin | Quantizer | _QuantElementwise) or \
        hasattr(mod, "weight_quant")


# -- eager quant wrappers (hand-built models): quantizers around a float op ------------------------------


def quant_output_op(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    """QuantReLU, QuantMaxPool2d, QuantLayerNorm...: [input_quant →] the float op's emitter [→ output_quant].

    Not registered for one op: the exporter's dispatch calls it for every :class:`QuantOutputMixin` layer,
    whose registry op (its ``_FLOAT_MODULE``'s) has a float emitter only.
    """
    spec = ops.module_spec(layer)
    float_handler = spec.emitter("onnx") if spec is not None else None
    if float_handler is None:
        raise ExportError(f"{type(layer).__name__} at fx node {node.name!r} wraps {layer._FLOAT_MODULE.__name__}, "
                          "which the ONNX exporter does not support; replace it with a supported op")
    src = node.args[0]
    x = ctx.tensor(src, node)
    if layer.input_quant is not None:
        x = apply_quantizer(ctx, x, layer.input_quant, f"{node.name}.input_quant")
    saved = ctx.env[src]
    ctx.env[src] = x  # the float handler reads its input from the environment
    try:
        out = float_handler(ctx, node, layer)
    finally:
        ctx.env[src] = saved
    if layer.output_quant is not None:
        return apply_quantizer(ctx, out, layer.output_quant, f"{node.name}.output_quant")
    if spec.policy is ops.Policy.PRESERVING and x.qparams is not None and out.qparams is None:
        return ctx.b.quantize_dequantize(out.name, x.qparams, node.name)
    return out


_ELEMENTWISE = {QuantAdd: "Add", QuantMul: "Mul", QuantMatmul: "MatMul"}


@emitter("add", "mul", "matmul", "cat", quantized=True)
def _quant_elementwise(ctx: ExportContext, node: fx.Node, layer: nn.Module):
    """QuantAdd / QuantMul / QuantMatmul / QuantCat: each operand's own quantizer, the op, output_quant."""
    operands = list(node.args[0]) if isinstance(layer, QuantCat) else list(node.args[:2])
    values = [ctx.tensor(a, node) for a in operands]
    if len(layer.input_quants):
        values = [apply_quantizer(ctx, v, q, f"{node.name}.input_quants.{i}")
                  for i, (v, q) in enumerate(zip(values, layer.input_quants, strict=True))]
    names = [v.name for v in values]
    if isinstance(layer, QuantCat):
        axis = layer.dim + ctx.rank(node) if layer.dim < 0 else layer.dim
        y = ctx.b.node("Concat", names, node.name, axis=axis)
    else:
        y = ctx.b.node(_ELEMENTWISE[type(layer)], names, node.name)
    return apply_quantizer(ctx, TensorValue(y), layer.output_quant, f"{node.name}.output_quant")
