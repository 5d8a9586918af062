"""TFLite handlers for sequence layers: ``nn.MultiheadAttention`` as a decomposition, ``nn.LSTM`` as one fused
UNIDIRECTIONAL_SEQUENCE_LSTM per layer (:func:`fused_lstm`; unrolled when an initial or final state is involved),
``nn.GRU`` unrolled over time (float and int8).

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

from compress import ops
from compress.errors import ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import Emitter, TValue, qparams_of
from compress.exporters.tflite.schema import Options, TensorType
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


def _second_output_used(em: Emitter, node: fx.Node) -> bool:
    """Whether ``node[1]`` (attention weights, a recurrent layer's final state) feeds anything; a quantizer
    that prepare put on it and that nothing reads does not count."""

    def used(n: fx.Node) -> bool:
        return any(not em.is_quantizer(u) or used(u) for u in n.users)

    return any(u.op == "call_function" and u.target is operator.getitem and u.args[1] == 1 and used(u)
               for u in node.users)


def _unsupported_options(em: Emitter, mod: nn.MultiheadAttention, node: fx.Node) -> str | None:
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
    if _second_output_used(em, node):
        return "returned attention weights (pass need_weights=False)"
    return None


def multihead_attention(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    problem = _unsupported_options(em, mod, node)
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


ops.register_emitter("tflite", "multihead_attention")(multihead_attention)


# -- LSTM ---------------------------------------------------------------------------------------------------
def _weight(em: Emitter, w: torch.Tensor, q: nn.Module | None, name: str, rows: slice = slice(None)) -> int:
    """A float weight tensor, or for an int8 layer its int8 codes per gate row (the simulation's), read by the
    FULLY_CONNECTED itself: TFLite's dynamic-range (hybrid) kernel — int8 × int8 products, the float input
    quantized per batch row (scale and zero point) on each call, float out. A constant DEQUANTIZE in front of
    a float FC (what this wrote before) stores the same bytes but computes in float: 3 of the zoo audio LSTM's
    53 FCs were int8.

    Why not the int8-output FULLY_CONNECTED: the simulation keeps the gate pre-activations in float (as int8
    runtimes keep them in int16 or float); an int8 output grid there would round each of them to 1/255 of
    its range, several hidden-state LSBs, and the file would no longer compute what the simulation does.

    ``rows``: the gate rows this FC computes (a GRU's r, z block and its n block are two FCs)."""
    if not isinstance(q, Quantizer):
        return em.const(name, _np(w)[rows], TensorType.FLOAT32)
    from compress.exporters.tflite.ops_base import int8_weight
    from compress.exporters.tflite.schema import QuantParams

    codes, s = int8_weight(w, q, name)
    return em.const(f"{name}_int8", codes[rows], TensorType.INT8, QuantParams.per_channel(s[rows], 0, 0))


def _fc(em: Emitter, x: TValue, w_t: int, b: np.ndarray, out_shape, name: str, hybrid: bool) -> TValue:
    """FULLY_CONNECTED, float bias; ``hybrid``: int8 per-channel weights (version 12, as TF's op_version.cc
    numbers a per-channel dynamic-range FC), else float (5 keeps the leading axes, 1 for 2-D)."""
    b_t = em.const(f"{name}_bias", b.astype(np.float32), TensorType.FLOAT32)
    out = em.tensor(name, out_shape, L.identity(len(out_shape)), TensorType.FLOAT32)
    version = 12 if hybrid else 5 if len(out_shape) > 2 else 1
    fields = {"FusedActivationFunction": 0, "KeepNumDims": len(out_shape) > 2}
    if hybrid:  # per-row zero points as well as scales: the finer grid, and what XNNPACK's qd8 kernels do
        fields["AsymmetricQuantizeInputs"] = True
    em.op("FULLY_CONNECTED", [x.tensor, w_t, b_t], [out.tensor], Options("FullyConnectedOptions", fields), version)
    return out


def _elementwise(em: Emitter, op: str, ins: list[TValue], name: str) -> TValue:
    shape = tuple(int(d) for d in np.broadcast_shapes(*(v.shape for v in ins)))  # a scalar may come first (1 − z)
    out = em.tensor(name, shape, L.identity(len(shape)), TensorType.FLOAT32)
    options = Options(f"{op.title()}Options", {"FusedActivationFunction": 0}) if op in ("ADD", "MUL") else None
    em.op(op, [v.tensor for v in ins], [out.tensor], options)
    return out


def _lstm_cell(em: Emitter, step: list[TValue], h, c, hidden_proj: list[TValue], name: str):
    """One LSTM step on the input projection ``step`` ([B, 4H], one block): gates i, f, g, o (torch's order)."""
    gates = _elementwise(em, "ADD", [step[0], hidden_proj[0]], f"{name}_gates")
    i, f, g, o = _split(em, gates, 4, name)
    i, f, o = (_elementwise(em, "LOGISTIC", [v], f"{name}_{k}_sig") for v, k in ((i, "i"), (f, "f"), (o, "o")))
    ig = _elementwise(em, "MUL", [i, _elementwise(em, "TANH", [g], f"{name}_g_tanh")], f"{name}_ig")
    c = ig if c is None else _elementwise(em, "ADD", [_elementwise(em, "MUL", [f, c], f"{name}_fc"), ig], f"{name}_c")
    return _elementwise(em, "MUL", [o, _elementwise(em, "TANH", [c], f"{name}_tc")], f"{name}_h"), c


def _gru_cell(em: Emitter, step: list[TValue], h, c, hidden_proj: list[TValue], name: str):
    """One GRU step on the projections' two blocks, r and z ``[B, 2H]`` and n ``[B, H]`` (torch's gate order r,
    z, n, each block its own FC): r, z from one ADD, LOGISTIC and SPLIT; h' = n + z·(h − n), the simulation's
    (1 − z)·n + z·h with one operator less (equal up to float32 rounding, before the hidden-state quantizer).
    11 operators and 14 tensors a step where one FC per projection and three-way SPLITs took 13 and 19."""
    (x_rz, x_n), (h_rz, h_n) = step, hidden_proj
    sig = _elementwise(em, "LOGISTIC", [_elementwise(em, "ADD", [x_rz, h_rz], f"{name}_rz_pre")], f"{name}_rz")
    r, z = _split(em, sig, 2, f"{name}_rz")
    n = _elementwise(em, "TANH", [_elementwise(em, "ADD", [x_n, _elementwise(em, "MUL", [r, h_n], f"{name}_rn")],
                                               f"{name}_n_pre")], f"{name}_n")
    if h is None:  # zero initial state: h' = (1 − z)·n
        one = em.const_value(1.0, z, f"{name}_one")
        return _elementwise(em, "MUL", [_elementwise(em, "SUB", [one, z], f"{name}_1mz"), n], f"{name}_zn"), None
    delta = _elementwise(em, "MUL", [z, _elementwise(em, "SUB", [h, n], f"{name}_hmn")], f"{name}_zd")
    return _elementwise(em, "ADD", [n, delta], f"{name}_h"), None


def _split(em: Emitter, v: TValue, n: int, name: str) -> list[TValue]:
    axis = em.int32_const(f"{name}_split_axis", [v.rank - 1])
    parts = [em.tensor(f"{name}_part{k}", v.shape[:-1] + (v.shape[-1] // n,), L.identity(v.rank), TensorType.FLOAT32)
             for k in range(n)]
    em.op("SPLIT", [axis, v.tensor], [p.tensor for p in parts], Options("SplitOptions", {"NumSplits": n}))
    return parts


# -- fused LSTM ---------------------------------------------------------------------------------------------
#: UnidirectionalSequenceLSTMOptions.fused_activation_function: the cell-input / cell-output activation.
_TANH = 4


def _fusable_lstm(em: Emitter, mod: nn.Module, node: fx.Node, hx) -> bool:
    """One UNIDIRECTIONAL_SEQUENCE_LSTM per layer is written when the op's single output (the hidden sequence)
    is all the graph reads: no initial state and no final state (its kernel keeps h and c in variable tensors
    and returns neither); those cases stay unrolled."""
    return (isinstance(mod, nn.LSTM) and not mod.bidirectional and not getattr(mod, "proj_size", 0)
            and hx is None and not _second_output_used(em, node))


def _gate_matrices(em: Emitter, w: torch.Tensor, q: nn.Module | None, name: str) -> list[int]:
    """The stacked torch weight ``[4H, in]`` (gates i, f, g, o) as the fused op's four ``[H, in]`` tensors.

    Int8 (``q`` a frozen quantizer): LiteRT's hybrid LSTM kernel reads one scale per weight tensor
    (``GetTensorScale`` in lstm_eval.cc; a per-channel table is not read), so each gate's block of the
    simulation's weights (its per-row codes × scales) is re-coded on one symmetric scale, max |w| / 127, the
    block's largest row scale: that row keeps its codes, the others round once more (≤ ½ of that scale).
    """
    if not isinstance(q, Quantizer):
        return [em.const(f"{name}{k}", _np(block), TensorType.FLOAT32) for k, block in enumerate(w.chunk(4))]
    from compress.exporters.tflite.schema import QuantParams

    return [em.const(f"{name}{k}_int8", codes, TensorType.INT8, QuantParams.per_tensor(scale, 0))
            for k, (codes, scale) in enumerate(gate_codes(w, q))]


def gate_codes(w: torch.Tensor, q: Quantizer) -> list[tuple[np.ndarray, float]]:
    """The int8 (codes, scale) of each gate block (i, f, g, o) of the stacked weight ``[4H, in]`` on its frozen
    quantizer ``q``, re-coded on one symmetric scale per block (:func:`_gate_matrices`); what the fused op
    stores and what its verification expects (:mod:`compress.exporters.tflite.verify_dynamic`)."""
    from compress.exporters.numerics import WEIGHT_QMAX

    out = []
    for block in q(w).detach().double().cpu().numpy().reshape(4, -1, w.shape[1]):
        scale = float(np.abs(block).max()) / WEIGHT_QMAX or 1.0
        out.append((np.clip(np.round(block / scale), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8), scale))
    return out


def _zeroed_states(em: Emitter, shape: tuple[int, ...], count: int, name: str) -> list[int]:
    """``count`` variable state tensors, each written with zeros by one UNPACK at the start of every invoke.

    The kernel reads h and c from variable tensors and leaves the last step's values in them; LiteRT zeroes
    variables only in ``allocate_tensors``, so without this the second call would start from the first call's
    final state (measured: outputs 0.35 apart on the same input)."""
    zeros = em.const(f"{name}_zeros", np.zeros((count, *shape), np.float32), TensorType.FLOAT32)
    states = []
    for k in range(count):
        t = em.tensor(f"{name}{k}", shape, L.identity(len(shape)), TensorType.FLOAT32).tensor
        em.w.tensors[t].variable = True
        states.append(t)
    em.op("UNPACK", [zeros], states, Options("UnpackOptions", {"Num": count, "Axis": 0}))
    return states


def fused_lstm(em: Emitter, node: fx.Node) -> None:
    """nn.LSTM / QuantLSTM as one UNIDIRECTIONAL_SEQUENCE_LSTM per layer (float, or hybrid: int8 gate weights
    read by the kernel, float activations, version 3).

    The hybrid kernel's arithmetic (TF lite/kernels/lstm_eval.cc, ``LstmStepHybrid``): at every step it
    quantizes the step's input and the previous hidden state per batch row (asymmetric with
    ``asymmetric_quantize_inputs``: scale (max − min) / 255 over the row with 0 in range, zero point rounded),
    multiplies them with the int8 gate matrices in int32 and rescales by input scale × weight scale (one per
    gate matrix), adds the float bias, applies sigmoid / tanh and updates the cell in float. The simulation
    instead keeps the hidden state on a static int8 grid after every step (``hidden_quants``), and its gate
    rows have their own scales (:func:`_gate_matrices`); the between-layer quantizers stay QUANTIZE →
    DEQUANTIZE. Verification therefore checks each fused op against a numpy model of that arithmetic given the
    op's own input (:func:`compress.exporters.tflite.verify.fused_lstm_reference`), and the layer's output
    against the simulation with the recurrent tolerance (``RECURRENT_RTOL``), as for ONNX's LSTM.

    A dynamic-mode QuantLSTM is written the same way (:func:`compress.exporters.tflite.ops_dynamic.dynamic_lstm`):
    it has no hidden-state or between-layer quantizers, so the file is exactly the hybrid kernel on the layer's
    gate codes, and its verification is the kernel model alone (the simulation's difference is information).
    """
    from compress.layers.recurrent import QuantLSTM

    mod = em.module(node)
    quant = isinstance(mod, QuantLSTM) and em.quantized
    x = em.to_float(em.torch_order(em.uncollapse(em.value(node.args[0]))))
    time_major = not mod.batch_first
    seq_shape = x.shape[:2]
    bsz = seq_shape[1] if time_major else seq_shape[0]
    hidden, name = mod.hidden_size, node.name
    states = _zeroed_states(em, (bsz, hidden), 2 * mod.num_layers, f"{name}_state")
    fields = {"FusedActivationFunction": _TANH, "CellClip": 0.0, "ProjClip": 0.0, "TimeMajor": time_major}
    if quant:  # per-row zero points as well as scales, as the unrolled dynamic-range FCs had them
        fields["AsymmetricQuantizeInputs"] = True
    for layer in range(mod.num_layers):
        sfx = f"_l{layer}"
        if quant and layer > 0 and len(mod.layer_input_quants):  # none in weight-only / dynamic layers
            x = _fake_quant(em, x, mod.layer_input_quants[layer - 1], f"{name}{sfx}_in")
        w_ih, w_hh = (_gate_matrices(em, getattr(mod, k + sfx), mod.weight_quants[k + sfx] if quant else None,
                                     f"{name}{sfx}_{k}") for k in ("weight_ih", "weight_hh"))
        # One bias per gate: the kernel adds it once, the layer's two biases summed (float, as the layer holds them).
        bias = np.zeros(4 * hidden, np.float32)
        if mod.bias:
            bias = (_np(getattr(mod, "bias_ih" + sfx)) + _np(getattr(mod, "bias_hh" + sfx))).astype(np.float32)
        biases = [em.const(f"{name}{sfx}_b{k}", b, TensorType.FLOAT32) for k, b in enumerate(bias.reshape(4, -1))]
        out = em.tensor(f"{name}{sfx}_out", (*seq_shape, hidden), L.identity(3), TensorType.FLOAT32)
        ins = [x.tensor, *w_ih, *w_hh, -1, -1, -1, *biases, -1, -1, states[2 * layer], states[2 * layer + 1],
               -1, -1, -1, -1]
        em.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, [out.tensor],
              Options("UnidirectionalSequenceLSTMOptions", fields), 3 if quant else 1)
        x = out
    em.bind(node, (x, None))


def recurrent(em: Emitter, node: fx.Node) -> None:
    """nn.LSTM / nn.GRU (and QuantLSTM / QuantGRU) unrolled over time in float, with an initial state (``hx``) and
    the final state (``h_n`` / ``(h_n, c_n)``) when the graph uses them (an encoder feeding a decoder).

    The input projection of all steps is one FULLY_CONNECTED (time-major); each step adds the hidden projection and
    applies the gates (SPLIT, LOGISTIC, TANH, MUL, ADD); PACK stacks the steps. A converted quant layer's FCs
    are dynamic-range int8 kernels on its int8 weight codes (:func:`_weight`), and its per-step hidden-state
    and between-layer quantizers are QUANTIZE → DEQUANTIZE, so the state carried from step to step is the
    simulation's. The one difference from the simulation: the kernel requantizes its input (already on the
    hidden or input grid) per batch row before the int8 products — measured on the zoo's audio LSTM
    (2×96, 25 steps) and GRU seq2seq, ≥ 99.9 % of outputs within 1 LSB.
    """
    from compress.layers.recurrent import QuantGRU, QuantLSTM

    mod = em.module(node)
    is_lstm = isinstance(mod, nn.LSTM)
    kind = "LSTM" if is_lstm else "GRU"
    problem = None
    if mod.bidirectional or getattr(mod, "proj_size", 0):
        problem = "bidirectional or proj_size"
    if problem is not None:
        raise ExportError(f"{node.name!r}: {kind} with {problem} is not exported to TFLite; use a unidirectional "
                          f"{kind} and its output sequence")
    hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
    if _fusable_lstm(em, mod, node, hx):
        return fused_lstm(em, node)
    hx = None if hx is None else em.value(hx)
    state0 = None if hx is None else [_state_rows(em, v, mod.num_layers, f"{node.name}_hx{i}")
                                      for i, v in enumerate(hx if isinstance(hx, tuple | list) else (hx,))]
    quant = isinstance(mod, QuantLSTM | QuantGRU) and em.quantized
    cell, n_gates = (_lstm_cell, 4) if is_lstm else (_gru_cell, 3)
    # Time-major [T, B, I] inside the file: the input projection of all steps is then [T·B, gates] and each
    # step's rows one plain 2-D STRIDED_SLICE, which XNNPACK runs (a slice of [B, T, ·] needed a shrink mask,
    # and the 50 of them in a 2-layer, 25-step LSTM each fell back to LiteRT's builtin kernel).
    x = em.to_float(em.uncollapse(em.value(node.args[0])))
    steps, bsz = (x.shape[1], x.shape[0]) if mod.batch_first else x.shape[:2]
    # [B, T, I] and [T, B, I] hold the same bytes when B or T is 1 (a decoder step): no TRANSPOSE then.
    x = em.to_perm(x, (1, 0, 2)) if mod.batch_first and min(steps, bsz) > 1 else em.torch_order(x)
    hidden, name = mod.hidden_size, node.name
    width = n_gates * hidden
    # The gate blocks one FC computes each: an LSTM's four gates together; a GRU's r, z apart from n (the cell
    # needs n's hidden projection on its own: two FCs instead of three-way SPLITs of both projections).
    blocks = [slice(0, width)] if is_lstm else [slice(0, 2 * hidden), slice(2 * hidden, width)]
    finals = []
    for layer in range(mod.num_layers):
        sfx = f"_l{layer}"
        if quant and layer > 0 and len(mod.layer_input_quants):  # none in weight-only / dynamic layers
            x = _fake_quant(em, x, mod.layer_input_quants[layer - 1], f"{name}{sfx}_in")
        hq = mod.hidden_quants[layer] if quant and len(mod.hidden_quants) else None
        wq_ih = mod.weight_quants["weight_ih" + sfx] if quant else None
        wq_hh = mod.weight_quants["weight_hh" + sfx] if quant else None
        w_ih = [_weight(em, getattr(mod, "weight_ih" + sfx), wq_ih, f"{name}{sfx}_w_ih", r) for r in blocks]
        w_hh = [_weight(em, getattr(mod, "weight_hh" + sfx), wq_hh, f"{name}{sfx}_w_hh", r) for r in blocks]
        # The biases as the layer holds them (float): the FCs add them in float, and a module called N times
        # (a decoder step) then stores one copy (the simulation's int32-grid snapping of each call's bias moves a
        # gate input by at most half of input/hidden scale × weight scale; per call they were 28 kB of the zoo
        # GRU seq2seq's file, 3 % of its fp32 size).
        b_ih, b_hh = (_np(getattr(mod, b + sfx)) if mod.bias else None for b in ("bias_ih", "bias_hh"))
        b_ih, b_hh = (np.zeros(width) if b is None else b for b in (b_ih, b_hh))
        gates_x = [_fc(em, x, w, b_ih[r], (steps * bsz, r.stop - r.start), f"{name}{sfx}_gx{k}", quant)
                   for k, (w, r) in enumerate(zip(w_ih, blocks, strict=True))]
        h = c = None
        if state0 is not None:  # the given initial state, its h on the hidden-state grid as the simulation has it
            h = _fake_quant(em, state0[0][layer], hq, f"{name}{sfx}_h0")
            c = state0[1][layer] if is_lstm else None
        outs = []
        for t in range(steps):
            tag = f"{name}{sfx}_t{t}"
            step = [g if steps == 1 else _step_rows(em, g, t, bsz, f"{tag}_{k}") for k, g in enumerate(gates_x)]
            if h is None:  # zero initial state: the hidden projection is its bias
                hidden_proj = [em.const_value(b_hh[r], v, f"{tag}_bhh{k}")
                               for k, (r, v) in enumerate(zip(blocks, step, strict=True))]
            else:
                hidden_proj = [_fc(em, h, w, b_hh[r], (bsz, r.stop - r.start), f"{tag}_gh{k}", quant)
                               for k, (w, r) in enumerate(zip(w_hh, blocks, strict=True))]
            h, c = cell(em, step, h, c, hidden_proj, tag)
            h = _fake_quant(em, h, hq, f"{tag}_h")
            outs.append(h)
        finals.append((h, c))
        x = _sequence(em, outs, mod, node, last=layer == mod.num_layers - 1, name=f"{name}{sfx}_out")
    state_n = None
    same_bytes = x is not None and mod.num_layers == 1 and steps == 1 and (bsz == 1 or not mod.batch_first)
    if _second_output_used(em, node):  # h_n (and c_n): the last step of each layer, stacked [layers, B, H]
        parts = [_stack(em, [f[k] for f in finals], f"{name}_{kind.lower()}_state{k}") for k in range(2 if is_lstm else 1)
                 if not (k == 0 and same_bytes)]
        if same_bytes:  # one layer, one step: h_n [1, B, H] is the output sequence's tensor (one PACK, not two)
            parts.insert(0, TValue(x.tensor, (1, bsz, hidden), x.dtype, L.identity(3)))
        state_n = tuple(parts) if is_lstm else parts[0]
    em.bind(node, (x, state_n))


def _sequence(em: Emitter, outs: list[TValue], mod: nn.Module, node: fx.Node, *, last: bool, name: str):
    """The steps' hidden states as one sequence: PACK [T, B, H] (time-major, what the next layer's input
    projection reads), or for the last layer of a batch_first module PACK along axis 1, torch's [B, T, H]
    with no TRANSPOSE after it; None when nothing reads the last layer's sequence (a seq2seq encoder whose
    final state is all the decoder takes)."""
    if last and not _first_output_used(em, node):
        return None
    steps, (bsz, hidden) = len(outs), outs[0].shape
    axis = 1 if last and mod.batch_first else 0
    shape = (bsz, steps, hidden) if axis else (steps, bsz, hidden)
    x = em.tensor(name, shape, L.identity(3), TensorType.FLOAT32)
    em.op("PACK", [v.tensor for v in outs], [x.tensor], Options("PackOptions", {"ValuesCount": steps, "Axis": axis}))
    return x


def _first_output_used(em: Emitter, node: fx.Node) -> bool:
    """Whether the output sequence (``node[0]``) feeds anything (quantizers nothing reads do not count)."""

    def used(n: fx.Node) -> bool:
        return any(not em.is_quantizer(u) or used(u) for u in n.users)

    return any(not (u.op == "call_function" and u.target is operator.getitem) or (u.args[1] == 0 and used(u))
               for u in node.users)


def _step_rows(em: Emitter, gates_x: TValue, t: int, bsz: int, tag: str) -> TValue:
    """Step ``t``'s rows of the time-major input projection ``[T·B, gates]``: a 2-D SLICE, which XNNPACK runs.
    SLICE (begin, size) rather than STRIDED_SLICE (begin, end, strides): a step's begin is shared by the
    projections of every gate block and the size by every step, 2 of 6 constants (a 6-step GRU: 8 instead of 24)."""
    width = gates_x.shape[1]
    step = em.tensor(f"{tag}_gx", (bsz, width), (0, 1), TensorType.FLOAT32)
    ins = [gates_x.tensor, em.int32_const(f"{tag}_begin", [t * bsz, 0]), em.int32_const(f"{tag}_size", [bsz, width])]
    em.op("SLICE", ins, [step.tensor], Options("SliceOptions"))
    return step


def _state_rows(em: Emitter, v: TValue, layers: int, name: str) -> list[TValue]:
    """An initial state ``[layers, B, H]`` as one float ``[B, H]`` value per layer."""
    v = em.to_float(em.torch_order(em.uncollapse(v)))
    rows = []
    for i in range(layers):
        row = em.tensor(f"{name}_{i}", v.shape[1:], (0, 1), TensorType.FLOAT32)
        ins = [v.tensor] + [em.int32_const(f"{name}_{i}_{k}", b) for k, b in
                            (("begin", [i, 0, 0]), ("end", [i + 1, *v.shape[1:]]), ("strides", [1, 1, 1]))]
        em.op("STRIDED_SLICE", ins, [row.tensor], Options("StridedSliceOptions", {"ShrinkAxisMask": 1}))
        rows.append(row)
    return rows


def _stack(em: Emitter, values: list[TValue], name: str) -> TValue:
    out = em.tensor(name, (len(values), *values[0].shape), L.identity(3), TensorType.FLOAT32)
    em.op("PACK", [v.tensor for v in values], [out.tensor], Options("PackOptions", {"ValuesCount": len(values),
                                                                                   "Axis": 0}))
    return out


ops.register_emitter("tflite", "lstm")(recurrent)
ops.register_emitter("tflite", "gru")(recurrent)
