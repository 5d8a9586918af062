"""TFLite handlers for sequence layers: ``nn.MultiheadAttention`` (float and int8) as a decomposition.

Attention is written as FULLY_CONNECTED projections, BATCH_MATMUL, SOFTMAX and RESHAPE / TRANSPOSE between the
``[B, S, E]`` and ``[B, H, S, Dh]`` layouts, in float. For a converted ``QuantMultiheadAttention`` the weights
are its int8 grid values and every inner quantizer of the torch simulation (q, k, v, probabilities, the
output projection's input) becomes QUANTIZE → DEQUANTIZE at the same place, so the file computes what the
simulation computes; the model-level quantizers around the layer are int8 tensors as everywhere else. The
projections stay float kernels: XNNPACK has no int8 batch matmul, and the float path keeps the whole block
in one delegate partition.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from compress.errors import ExportError
from compress.exporters import tflite_layout as L
from compress.exporters.tflite_graph import Emitter, TValue, qparams_of
from compress.exporters.tflite_schema import Options, TensorType
from compress.layers.attention import QuantMultiheadAttention
from compress.quant.fake import Quantizer


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().float().numpy()


def _dense(em: Emitter, x: TValue, w: np.ndarray, b: np.ndarray | None, name: str) -> TValue:
    """FULLY_CONNECTED over the last axis, keeping the leading axes (float)."""
    out_shape = x.shape[:-1] + (w.shape[0],)
    w_t = em.const(f"{name}_weight", w.astype(np.float32), TensorType.FLOAT32)
    b_t = em.const(f"{name}_bias", (b if b is not None else np.zeros(w.shape[0])).astype(np.float32),
                   TensorType.FLOAT32)
    out = em.tensor(name, out_shape, L.identity(len(out_shape)), TensorType.FLOAT32)
    em.op("FULLY_CONNECTED", [x.tensor, w_t, b_t], [out.tensor],
          Options("FullyConnectedOptions", {"FusedActivationFunction": 0, "KeepNumDims": True}), 5)
    return out


def _fake_quant(em: Emitter, v: TValue, q: nn.Module | None, name: str) -> TValue:
    """The simulation's ``Quantizer`` on a float value: QUANTIZE → DEQUANTIZE (no-op without one)."""
    if not isinstance(q, Quantizer):
        return v
    return em.to_float(em.quantize(v, qparams_of(q), f"{name}_q"))


def _heads(em: Emitter, v: TValue, heads: int, name: str) -> TValue:
    """``[B, S, E]`` → ``[B, H, S, Dh]`` (RESHAPE, TRANSPOSE)."""
    b, s, e = v.shape
    split = em.tensor(f"{name}_split", (b, s, heads, e // heads), L.identity(4), TensorType.FLOAT32)
    em.reshape(v.tensor, split, split.shape, False)
    moved = TValue(split.tensor, (b, heads, s, e // heads), TensorType.FLOAT32, (0, 2, 1, 3))
    return em.torch_order(moved)


def _unsupported_options(mod: nn.MultiheadAttention, node: fx.Node) -> str | None:
    if mod.bias_k is not None or mod.add_zero_attn:
        return "add_bias_kv / add_zero_attn"
    if not mod._qkv_same_embed_dim:
        return "kdim / vdim different from embed_dim"
    masks = [k for k in ("key_padding_mask", "attn_mask") if node.kwargs.get(k) is not None]
    if len(node.args) > 3 and node.args[3] is not None:
        masks.append("key_padding_mask")
    if node.kwargs.get("is_causal"):
        masks.append("is_causal")
    if masks:
        return ", ".join(sorted(set(masks)))
    for user in node.users:
        if user.op == "call_function" and user.target is operator.getitem and user.args[1] == 1 and user.users:
            return "returned attention weights (pass need_weights=False)"
    return None


def multihead_attention(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    problem = _unsupported_options(mod, node)
    if problem is not None:
        raise ExportError(f"{node.name!r}: MultiheadAttention with {problem} is not exported to TFLite; use plain "
                          "self/cross-attention without masks")
    quant = isinstance(mod, QuantMultiheadAttention) and em.quantized
    ins = []
    for i, arg in enumerate(node.args[:3]):
        v = em.to_float(em.torch_order(em.uncollapse(em.value(arg))))
        if not mod.batch_first:  # [S, B, E] → [B, S, E]
            v = em.torch_order(TValue(v.tensor, (v.shape[1], v.shape[0], v.shape[2]), v.dtype, (1, 0, 2)))
        ins.append(_fake_quant(em, v, [mod.input_quant, mod.key_input_quant, mod.value_input_quant][i]
                               if quant else None, f"{node.name}_in{i}"))
    heads, head_dim, name = mod.num_heads, mod.head_dim, node.name
    if quant:
        weights = [_np(w) for w in mod.quantized_weights().values()]
        in_scales = (mod.known_input_scale(), mod._scale_or_buffer(mod.key_input_quant),
                     mod._scale_or_buffer(mod.value_input_quant))
        biases = [_np(b) for b in mod._proj_biases(in_scales)]
    else:
        weights = [_np(w) for w in mod.in_proj_weight.chunk(3)]
        biases = [None] * 3 if mod.in_proj_bias is None else [_np(b) for b in mod.in_proj_bias.chunk(3)]
    q, k, v = (_dense(em, x, w, b, f"{name}_{p}") for x, w, b, p in zip(ins, weights, biases, "qkv", strict=True))
    scale = em.const(f"{name}_scale", np.array([head_dim ** -0.5], np.float32), TensorType.FLOAT32)
    q_scaled = em.tensor(f"{name}_q_scaled", q.shape, L.identity(3), TensorType.FLOAT32)
    em.op("MUL", [q.tensor, scale], [q_scaled.tensor], Options("MulOptions", {"FusedActivationFunction": 0}))
    q = _fake_quant(em, q_scaled, mod.q_quant if quant else None, f"{name}_qh")
    k = _fake_quant(em, k, mod.k_quant if quant else None, f"{name}_kh")
    v = _fake_quant(em, v, mod.v_quant if quant else None, f"{name}_vh")
    qh, kh, vh = (_heads(em, t, heads, f"{name}_{p}") for t, p in zip((q, k, v), "qkv", strict=True))
    bsz, tgt, src = qh.shape[0], qh.shape[2], kh.shape[2]
    scores = em.tensor(f"{name}_scores", (bsz, heads, tgt, src), L.identity(4), TensorType.FLOAT32)
    em.op("BATCH_MATMUL", [qh.tensor, kh.tensor], [scores.tensor],
          Options("BatchMatMulOptions", {"AdjX": False, "AdjY": True}))
    probs = em.tensor(f"{name}_probs", scores.shape, L.identity(4), TensorType.FLOAT32)
    em.op("SOFTMAX", [scores.tensor], [probs.tensor], Options("SoftmaxOptions", {"Beta": 1.0}))
    probs = _fake_quant(em, probs, mod.attn_quant if quant else None, f"{name}_probs")
    ctx = em.tensor(f"{name}_ctx", (bsz, heads, tgt, head_dim), L.identity(4), TensorType.FLOAT32)
    em.op("BATCH_MATMUL", [probs.tensor, vh.tensor], [ctx.tensor],
          Options("BatchMatMulOptions", {"AdjX": False, "AdjY": False}))
    merged = em.torch_order(TValue(ctx.tensor, (bsz, tgt, heads, head_dim), TensorType.FLOAT32, (0, 2, 1, 3)))
    flat = em.tensor(f"{name}_merged", (bsz, tgt, mod.embed_dim), L.identity(3), TensorType.FLOAT32)
    em.reshape(merged.tensor, flat, flat.shape, False)
    proj = mod.out_proj
    if quant:
        flat = _fake_quant(em, flat, proj.input_quant, f"{name}_ctx")
        w_o, b_o = _np(proj.quantized_weight()), _np(proj.quantized_bias())
    else:
        w_o, b_o = _np(proj.weight), _np(proj.bias)
    out = _dense(em, flat, w_o, b_o, f"{name}_out")
    if quant:
        out = _fake_quant(em, out, mod.output_quant, f"{name}_out")
    if not mod.batch_first:
        out = TValue(out.tensor, (out.shape[1], out.shape[0], out.shape[2]), out.dtype, (1, 0, 2))
    em.bind(node, (out, None))


MODULE_HANDLERS = [(nn.MultiheadAttention, multihead_attention)]
