"""TFLite transposed convolution (``nn.ConvTranspose2d`` / ``1d``): TRANSPOSE_CONV, float or int8.

TRANSPOSE_CONV takes ``(output_shape, filter, input[, bias])``; its filter is OHWI (``[C_out, kh, kw, C_in]``,
torch's ``[C_in, C_out, kh, kw]`` moved), so the per-output-channel weight scales of a QuantConvTranspose
(torch's weight axis 1) sit on the filter's axis 0, as for CONV_2D. The int8 form (version 3: int8 input,
filter and output, int32 bias on ``s_in · s_w``, zero point 0) is what TF's converter writes; LiteRT's kernel
(and XNNPACK's ``qs8`` deconvolution) accumulate exactly in int32 and round once onto the output grid, as
the torch simulation does.

Padding: the op is written VALID, i.e. the full ``(in − 1)·s + k`` output, then cropped by STRIDED_SLICE to
torch's ``(in − 1)·s − 2p + k + output_padding`` (TFLite's SAME would centre the crop differently from torch's
symmetric ``p``). Output padding that reaches past the full output adds rows that hold the bias only: PAD,
then the bias ADD in float (int8 would need a second rounding there, so that rare case stays float).
"""

from __future__ import annotations

import numpy as np
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.numerics import bias_codes, weight_codes
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import ACT_CODE, Emitter, TValue
from compress.exporters.tflite.ops_base import _finish, _int8_ready, _meta_shape, conv1d_as_2d, emits
from compress.exporters.tflite.ops_index import _slice
from compress.exporters.tflite.schema import Options, QuantParams, TensorType
from compress.layers.base import FusedActivation, QuantLayerMixin


def _geometry(em: Emitter, node: fx.Node, mod: nn.Module, x: TValue):
    """(x as NHWC ``[N, C, H, W]`` TValue, 1-D?, stride, padding, output padding) with Conv1d as height 1."""
    if mod.groups != 1 or any(d != 1 for d in mod.dilation):
        raise ExportError(f"{node.name!r}: ConvTranspose with groups or dilation has no TFLite kernel "
                          "(TRANSPOSE_CONV); use groups=1, dilation=1")
    one_d = isinstance(mod, nn.ConvTranspose1d)
    if one_d:
        return conv1d_as_2d(em, x, node.name), True, (1, mod.stride[0]), (0, mod.padding[0]), (0, mod.output_padding[0])
    x = em.to_perm(x, L.NCHW_TO_NHWC)
    return x, False, L.pair(mod.stride), L.pair(mod.padding), L.pair(mod.output_padding)


def _filter_and_bias(em: Emitter, mod: nn.Module, x: TValue, int8: bool, one_d: bool, in_conv: bool, name: str):
    """(OHWI filter tensor, bias tensor, float bias values for a late ADD). Int8: the simulation's weight codes
    per output channel and its int32 bias; float: a QuantConvTranspose's fake-quantized weights and bias (the
    simulation's values), a float layer's own."""
    quant = isinstance(mod, QuantLayerMixin)
    w = (mod.quantized_weight() if quant else mod.weight).detach().cpu().numpy().astype(np.float32)
    cout = w.shape[1]
    if int8:
        codes, s_w, _axis = weight_codes(mod.weight, mod.weight_quant, f"layer {name}")  # [Cin, Cout, k...]
        codes = codes[:, :, None, :] if one_d else codes
        s_w = np.broadcast_to(np.asarray(s_w, np.float64).reshape(-1), (cout,)).copy()  # per tensor: repeated
        ohwi = np.ascontiguousarray(codes.transpose(1, 2, 3, 0)).astype(np.int8)
        w_t = em.const(f"{name}_weight", ohwi, TensorType.INT8, QuantParams.per_channel(s_w, 0, 0))
        bias = mod.bias if mod.bias is not None else mod.weight.new_zeros(cout)
        bq, s_b = bias_codes(bias, mod.weight.new_tensor(x.quant.scale[0]), mod.weight_quant.scale)
        s_b = np.broadcast_to(s_b.double().numpy().reshape(-1), (cout,))
        b_t = em.const(f"{name}_bias", bq.numpy(), TensorType.INT32, QuantParams.per_channel(s_b, 0, 0))
        return w_t, b_t, None
    w = w[:, :, None, :] if one_d else w
    w_t = em.const(f"{name}_weight", np.ascontiguousarray(w.transpose(1, 2, 3, 0)), TensorType.FLOAT32)
    bias_t = mod.quantized_bias() if quant else mod.bias  # the simulation's int32 grid
    bias = (bias_t.detach().cpu().numpy() if bias_t is not None else np.zeros(cout)).astype(np.float32)
    b_t = em.const(f"{name}_bias", bias if in_conv else np.zeros(cout, np.float32), TensorType.FLOAT32)
    return w_t, b_t, bias


def conv_transpose(em: Emitter, node: fx.Node) -> None:
    """TRANSPOSE_CONV (VALID) cropped to torch's output; int8 when the layer is a QuantConvTranspose with an
    int8 input and an output quantizer, else float (int8 inputs dequantized, the output quantized after)."""
    if len(node.args) > 1 or node.kwargs.get("output_size") is not None:
        raise ExportError(f"transposed conv {node.name!r} is called with output_size; set output_padding on the "
                          "layer instead")
    mod = em.module(node)
    plan = em.plan_output(node)  # a following ReLU / ReLU6 fuses (version 4), as into CONV_2D
    x = em.value(node.args[0])
    x, one_d, s, p, op = _geometry(em, node, mod, x)
    n, _, h, wd = x.shape
    cout, k = mod.out_channels, (1, mod.kernel_size[0]) if one_d else L.pair(mod.kernel_size)
    full = ((h - 1) * s[0] + k[0], (wd - 1) * s[1] + k[1])
    want = tuple(full[i] - 2 * p[i] + op[i] for i in range(2))
    overhang = [max(p[i] + want[i] - full[i], 0) for i in range(2)]
    in_conv = not any(overhang)
    int8 = in_conv and _int8_ready(em, mod, x, plan)
    if not int8:
        x = em.to_float(x)
        if not in_conv and plan.act is not FusedActivation.NONE:  # the clamp must follow the late bias ADD
            plan = em.plan_output(node, fuse_act=False)
    w_t, b_t, bias = _filter_and_bias(em, mod, x, int8, one_d, in_conv, node.name)
    dtype = TensorType.INT8 if int8 else TensorType.FLOAT32
    out = em.tensor(f"{node.name}_full", (n, cout, *full), L.NCHW_TO_NHWC, dtype, plan.quant if int8 else None)
    ins = [em.int32_const(f"{node.name}_out_shape", [n, full[0], full[1], cout]), w_t, x.tensor, b_t]
    em.op("TRANSPOSE_CONV", ins, [out.tensor],
          Options("TransposeConvOptions", {"Padding": 1, "StrideW": s[1], "StrideH": s[0],
                                           "FusedActivationFunction": ACT_CODE[plan.act]}),
          3 if plan.act is FusedActivation.NONE else 4)  # TF's op_version: 3 = bias input, 4 = fused activation
    if not in_conv:
        padded = em.tensor(f"{node.name}_overhang", (n, cout, full[0] + overhang[0], full[1] + overhang[1]),
                           L.NCHW_TO_NHWC, TensorType.FLOAT32)
        em.op("PAD", [out.tensor, em.int32_const(f"{node.name}_overhang_pads",
                                                 [[0, 0], [0, overhang[0]], [0, overhang[1]], [0, 0]])],
              [padded.tensor], Options("PadOptions"))
        out = padded
    if want != full:
        out = _slice(em, _slice(em, out, 1, p[0], p[0] + want[0], f"{node.name}_crop_h"), 2, p[1], p[1] + want[1],
                     f"{node.name}_crop")
    if not in_conv:
        with_bias = em.like(out, f"{node.name}_bias_added", quant=None)
        em.op("ADD", [out.tensor, em.const(f"{node.name}_bias_late", bias, TensorType.FLOAT32)], [with_bias.tensor],
              Options("AddOptions", {"FusedActivationFunction": 0}))
        out = with_bias
    if one_d:  # back to [N, L', O], torch axes (0, 2, 1)
        shape = _meta_shape(node)
        flat = em.tensor(node.name, shape, (0, 2, 1), out.dtype, out.quant)
        em.reshape(out.tensor, flat, (shape[0], shape[2], shape[1]), out.is_int8)
        out = flat
    _finish(em, node, out, plan)


# Float ConvTranspose (an fp32 file, or a float layer inside an int8 graph): between DEQUANTIZE and QUANTIZE.
emits("conv_transpose", in_float=True)(conv_transpose)
# QuantConvTranspose: int8 TRANSPOSE_CONV where the input is int8 (falls back to float itself otherwise).
ops.register_emitter("tflite", "conv_transpose", quantized=True)(conv_transpose)
