"""ONNX emitters, sequence layers: multi-head attention and LSTM / GRU, float and int8.

Attention is decomposed (there is no standard ONNX attention op at opset 17): projections as ``MatMul``
(+ ``Add``), reshape / transpose to ``[N, heads, L, head_dim]``, ``Q·K^T``, mask ``Add``, ``Softmax``, ``·V``,
back to ``[N, L, E]``, out-projection. Internally the layout is batch-major whatever ``batch_first`` says,
so the batch dimension stays dimension 0 of every intermediate (dynamic batch needs one symbolic dim).
For :class:`~compress.layers.QuantMultiheadAttention` the weights are int8 initializers behind
``DequantizeLinear``, biases int32, and every internal quantizer of the layer (``q_quant``, ``k_quant``,
``v_quant``, ``attn_quant``, ``out_proj.input_quant``) becomes a ``QuantizeLinear → DequantizeLinear`` pair
placed directly before the matmul that consumes it, so onnxruntime's QDQ fusion runs both attention matmuls
and all projections in int8. The 1/sqrt(head_dim) factor the layer applies to ``q`` is folded into the
q-projection's weight and bias scales: the int8 codes are unchanged and the projection can feed ``q_quant``
directly.

LSTM / GRU become the ONNX ``LSTM`` / ``GRU`` ops, one per layer (both directions in one op). Gate order is
converted (torch ``i,f,g,o`` → ONNX ``i,o,f,c``; torch ``r,z,n`` → ONNX ``z,r,h`` with
``linear_before_reset=1``, which is torch's GRU). For :class:`~compress.layers.QuantLSTM` /
:class:`~compress.layers.QuantGRU` the weights are stored as int8 initializers, and:

* uint8 activations (x86): a QuantLSTM becomes ``com.microsoft.DynamicQuantizeLSTM`` with our int8 weights
  and per-gate-row scales; onnxruntime quantizes the input and hidden state of every step dynamically (static
  QDQ cannot quantize ONNX ``LSTM``). Measured here, 1 thread, LSTMClassifier (2×128, 100 steps): batch 8
  4.8 ms vs fp32 6.5 ms (×1.36; onnxruntime's own quantize_dynamic 4.2 ms per-tensor / 4.6 ms per-channel);
  batch 1 on par with fp32 (1.49 vs 1.41 ms). onnxruntime has no dynamic GRU, so QuantGRU takes the path
  below on every target.
* int8 activations (ARM) and GRU: ``DequantizeLinear → LSTM/GRU`` (int8 storage, float recurrence; portable
  to any ONNX runtime). onnxruntime cannot pre-pack weights that come out of a DequantizeLinear, so this path
  is slower than fp32 in onnxruntime (10.5 vs 6.5 ms above): it buys a 4× smaller file, not speed.

Neither path can quantize the hidden state *inside* the recurrence as the simulation does
(``hidden_quants``), so these outputs are not bit-faithful: the exporter marks everything downstream as
approximate, and :func:`~compress.exporters.verify_onnx` compares those outputs in float with the tolerance
recorded in :class:`~compress.exporters.OnnxExportInfo` (``output_tolerances``). The layer outputs ``Y`` /
``Y_h`` are snapped back onto the hidden quantizers' grids, which keeps the difference small.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

import compress.layers as qlayers
from compress.errors import ExportError
from compress.exporters import numerics
from compress.exporters.onnx.graph import ExportContext, PyValue, TensorValue, arg, emitter, static
from compress.exporters.onnx.ops_dynamic import rows_gemm
from compress.exporters.onnx.ops_quant import apply_quantizer
from compress.layers.dynamic import layer_mode
from compress.quant.config import QuantMode
from compress.quant.fake import Quantizer, QuantState

#: Relative tolerance (max |diff| / max |reference|) for outputs downstream of a quantized recurrent layer.
#: Measured max: LSTMClassifier (2×128, 50 steps) 0.012 with DynamicQuantizeLSTM, 0.006 with DQ→LSTM;
#: 2-layer bidirectional LSTM / GRU (16 wide, 10 steps) 0.007–0.010. The gap comes from the hidden state,
#: which is float (or dynamically quantized) in ONNX and on a static int8 grid in the simulation.
#: Op-by-op verification also compares the recurrent layer's own output (the hidden states before the head),
#: where the gap is larger: zoo audio_lstm (Conv1d + LSTM 64, 25 steps) 0.062 of max |h| on its test split
#: (0.023 on its calibration set), while its accuracy equals fp32. 0.1 keeps that while a wrong weight scale
#: still fails: audio_lstm's hidden states with weight_ih or weight_hh × 1.1 differ by 0.66–1.6 of max |h|.
RECURRENT_RTOL = 0.1

_F32 = np.float32


def _qdq(ctx: ExportContext, x: TensorValue, q: Quantizer | None, hint: str) -> TensorValue:
    return apply_quantizer(ctx, x, q, hint) if q is not None else x


def _requantize_like(ctx: ExportContext, x: str, src: TensorValue, hint: str) -> TensorValue:
    """After a reshape/transpose of a quantized value: the same grid again, so the next op sees a DequantizeLinear."""
    if src.qparams is None:
        return TensorValue(x)
    return ctx.b.quantize_dequantize(x, src.qparams, hint)


def _scale_of(q: Quantizer | None) -> torch.Tensor | None:
    if isinstance(q, Quantizer) and q.state is not QuantState.OBSERVING:
        return q.scale.detach()
    return None


def _check_frozen(q: Quantizer, where: str) -> None:
    if q.state is QuantState.OBSERVING:
        raise ExportError(f"quantizer {where!r} has not been calibrated (still observing); "
                          "run calibrate() and convert() before exporting")


# -- attention ------------------------------------------------------------------------------------------
def _project(ctx: ExportContext, x: TensorValue, w: torch.Tensor, b: torch.Tensor | None, hint: str, *,
             wq: Quantizer | None = None, in_scale: torch.Tensor | None = None, factor: float = 1.0) -> str:
    """``(x · w^T + b) · factor`` for a [N, L, in] input: MatMul with [in, out] weights, then Add.

    Quantized (``wq`` given): int8 codes behind DequantizeLinear with scale ``w_scale · factor``; the bias on
    the int32 grid of ``in_scale · w_scale`` exactly as the simulation snaps it, dequantized with the same
    factor folded in.
    """
    b_ = ctx.b
    if wq is None:
        wt = b_.const(np.ascontiguousarray(w.detach().float().numpy().T) * _F32(factor), f"{hint}.weight_t")
        y = b_.node("MatMul", [x.name, wt], hint)
        if b is None:
            return y
        return b_.node("Add", [y, b_.const(b.detach().float().numpy() * _F32(factor), f"{hint}.bias")], hint)
    codes, scale, axis = numerics.weight_codes(w, wq, hint)
    if in_scale is None and x.qparams is None:  # weight-only: float input (rows_gemm says why not MatMul)
        # [out, in] with transB: onnxruntime turns DQ(axis 1 of [in, out]) → Gemm into MatMulNBits as well.
        w_dq = b_.dequantized_const(codes, scale * _F32(factor), axis, f"{hint}.weight")
        bias = None if b is None else b_.const(b.detach().float().numpy() * _F32(factor), f"{hint}.bias")
        return rows_gemm(ctx, x.name, w_dq, bias, codes.shape[0], hint)
    wt = b_.dequantized_const(np.ascontiguousarray(codes.T), scale * _F32(factor), None if axis is None else 1,
                              f"{hint}.weight_t")
    y = b_.node("MatMul", [x.name, wt], hint)
    if b is None:
        return y
    if in_scale is None:
        bias = b_.const(b.detach().float().numpy() * _F32(factor), f"{hint}.bias")
    else:
        # The arithmetic the layer's forward snaps its bias with: the codes are the simulation's.
        bcodes, s = numerics.bias_codes(b, in_scale, wq.scale.detach())
        bcodes = bcodes.numpy()
        s = np.broadcast_to(s.float().numpy() * _F32(factor), bcodes.shape).copy() if s.dim() else \
            s.float().numpy() * _F32(factor)
        bias = b_.dequantized_const(bcodes, s, 0, f"{hint}.bias")
    return b_.node("Add", [y, bias], hint)


def _mask_term(ctx: ExportContext, mask_arg, node: fx.Node, what: str) -> str | None:
    """A bool (True = may not attend) or float mask as the float term added to the scores."""
    if mask_arg is None:
        return None
    value = ctx.value(mask_arg)
    if isinstance(value, PyValue) and value.value is None:
        return None
    m = ctx.tensor(mask_arg, node)
    dtype = ctx.dtype(mask_arg) if isinstance(mask_arg, fx.Node) else torch.float32
    if dtype == torch.bool:
        return ctx.b.node("Where", [m.name, ctx.b.scalar(-np.inf, _F32), ctx.b.scalar(0.0, _F32)], f"{node.name}.{what}")
    if dtype != torch.float32:
        return ctx.b.node("Cast", [m.name], f"{node.name}.{what}", to=1)
    return m.name


@emitter("multihead_attention")
@emitter("multihead_attention", quantized=True)
@emitter("multihead_attention", quantized=True, mode="weight-only")  # no activation quantizers: float attention
def _attention(ctx: ExportContext, node: fx.Node, mha: nn.MultiheadAttention):
    quant = isinstance(mha, qlayers.QuantMultiheadAttention)
    name, b = node.name, ctx.b
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ExportError(f"attention {name!r} uses add_bias_kv/add_zero_attn, which the ONNX exporter does not "
                          "write; build the layer without them")
    if ctx.rank(node.args[0]) != 3:
        raise ExportError(f"attention {name!r} gets an unbatched (2-d) query; export it with a batch dimension")
    need_weights = bool(static(ctx, arg(node, 4, "need_weights", True), node))
    average = bool(static(ctx, arg(node, 6, "average_attn_weights", True), node))
    is_causal = bool(static(ctx, arg(node, 7, "is_causal", False), node))
    heads, head_dim, embed = mha.num_heads, mha.head_dim, mha.embed_dim

    def batch_major(i: int, q_name: str) -> TensorValue:
        x = ctx.tensor(node.args[i] if len(node.args) > i else node.kwargs[("query", "key", "value")[i]], node)
        if quant:
            x = _qdq(ctx, x, getattr(mha, q_name), f"{name}.{q_name}")
        if mha.batch_first:
            return x
        return _requantize_like(ctx, b.node("Transpose", [x.name], name, perm=[1, 0, 2]), x, name)

    q_in, k_in, v_in = (batch_major(i, qn) for i, qn in
                        enumerate(("input_quant", "key_input_quant", "value_input_quant")))
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3, dim=0)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
    seq_dim = 1 if mha.batch_first else 0
    key_node = node.args[1] if len(node.args) > 1 else node.kwargs["key"]
    tgt_len, src_len = ctx.shape(node.args[0])[seq_dim], ctx.shape(key_node)[seq_dim]

    def projection(x: TensorValue, w, bias, wname: str, in_q: str, act_q: str, factor: float) -> TensorValue:
        if not quant:
            return TensorValue(_project(ctx, x, w, bias, f"{name}.{wname}", factor=factor))
        # The simulation snaps q/k/v biases with the query's input scale unless the layer has its own
        # key/value input quantizers (standalone use); the same scales are used here, whatever x's grid.
        in_scale = _scale_of(getattr(mha, in_q)) if getattr(mha, in_q) is not None else None
        if in_scale is None:
            in_scale = mha.known_input_scale() if in_q == "input_quant" else mha.input_scale
        wq = mha.weight_quants[wname]
        _check_frozen(wq, f"{name}.weight_quants.{wname}")
        y = TensorValue(_project(ctx, x, w, bias, f"{name}.{wname}", wq=wq, in_scale=in_scale, factor=factor))
        return _qdq(ctx, y, getattr(mha, act_q), f"{name}.{act_q}")

    q = projection(q_in, w_q, biases[0], "q_proj_weight", "input_quant", "q_quant", head_dim**-0.5)
    k = projection(k_in, w_k, biases[1], "k_proj_weight", "key_input_quant", "k_quant", 1.0)
    v = projection(v_in, w_v, biases[2], "v_proj_weight", "value_input_quant", "v_quant", 1.0)

    def heads_of(x: TensorValue, perm: list[int]) -> TensorValue:
        split = b.node("Reshape", [x.name, b.int64s([0, 0, heads, head_dim])], name)
        return _requantize_like(ctx, b.node("Transpose", [split], name, perm=perm), x, name)

    qh = heads_of(q, [0, 2, 1, 3])  # [N, H, L, d]
    kt = heads_of(k, [0, 2, 3, 1])  # [N, H, d, S]
    vh = heads_of(v, [0, 2, 1, 3])  # [N, H, S, d]
    scores = b.node("MatMul", [qh.name, kt.name], name)
    attn_mask = _mask_term(ctx, arg(node, 5, "attn_mask", None), node, "attn_mask")
    if attn_mask is None and is_causal:
        causal = np.triu(np.full((tgt_len, src_len), -np.inf, _F32), 1)
        attn_mask = b.const(causal, f"{name}.causal_mask")
    if attn_mask is not None:
        mask_node = arg(node, 5, "attn_mask", None)
        if isinstance(mask_node, fx.Node) and ctx.rank(mask_node) == 3:  # [N*H, L, S] → [N, H, L, S]
            attn_mask = b.node("Reshape", [attn_mask, b.int64s([-1, heads, tgt_len, src_len])], name)
        scores = b.node("Add", [scores, attn_mask], name)
    kpm = _mask_term(ctx, arg(node, 3, "key_padding_mask", None), node, "key_padding_mask")
    if kpm is not None:
        scores = b.node("Add", [scores, b.node("Reshape", [kpm, b.int64s([0, 1, 1, src_len])], name)], name)
    probs = TensorValue(b.node("Softmax", [scores], name, axis=-1))
    if quant:
        probs = _qdq(ctx, probs, mha.attn_quant, f"{name}.attn_quant")
    context = TensorValue(b.node("MatMul", [probs.name, vh.name], name))  # [N, H, L, d]
    ctx_q = mha.out_proj.input_quant if quant else None
    if ctx_q is not None:
        context = _qdq(ctx, context, ctx_q, f"{name}.out_proj.input_quant")
    merged = b.node("Reshape", [b.node("Transpose", [context.name], name, perm=[0, 2, 1, 3]),
                                b.int64s([0, 0, embed])], name)
    merged = _requantize_like(ctx, merged, context, name)
    out_proj = mha.out_proj
    if quant:
        _check_frozen(out_proj.weight_quant, f"{name}.out_proj.weight_quant")
        out = TensorValue(_project(ctx, merged, out_proj.weight, out_proj.bias, f"{name}.out_proj",
                                   wq=out_proj.weight_quant, in_scale=out_proj.known_input_scale()))
        out = _qdq(ctx, out, mha.output_quant, f"{name}.output_quant")
    else:
        out = TensorValue(_project(ctx, merged, out_proj.weight, out_proj.bias, f"{name}.out_proj"))
    if not mha.batch_first:
        out = _requantize_like(ctx, b.node("Transpose", [out.name], name, perm=[1, 0, 2]), out, name)

    weights: TensorValue | PyValue = PyValue(None)
    if need_weights:
        weights = probs if not average else TensorValue(_mean_heads(ctx, probs.name, name))
    return out, weights


def _mean_heads(ctx: ExportContext, probs: str, hint: str) -> str:
    if ctx.b.opset >= 18:
        return ctx.b.node("ReduceMean", [probs, ctx.b.int64s([1])], hint, keepdims=0)
    return ctx.b.node("ReduceMean", [probs], hint, axes=[1], keepdims=0)


# -- LSTM / GRU -----------------------------------------------------------------------------------------
_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}  # ONNX gate block k comes from torch block order[k]


def _reorder(t: np.ndarray, kind: str) -> np.ndarray:
    """Rows (axis 0) of a stacked [gates·H, ...] tensor from torch's gate order to ONNX's."""
    blocks = np.split(t, len(_GATE_ORDER[kind]), axis=0)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[kind]], axis=0)


def _state_users(node: fx.Node) -> bool:
    """Whether anything reads the final states (output index 1), not just the sequence output."""
    for user in node.users:
        if user.op != "call_function" or len(user.args) < 2 or not isinstance(user.args[1], int):
            return True  # the whole tuple escapes (returned, passed on)
        if user.args[1] != 0 and user.users:
            return True
    return False


class _Rnn:
    """Emits one fx LSTM/GRU node as a chain of ONNX LSTM/GRU ops (one per layer)."""

    def __init__(self, ctx: ExportContext, node: fx.Node, mod: nn.Module):
        self.ctx, self.node, self.mod, self.b = ctx, node, mod, ctx.b
        self.kind = "LSTM" if isinstance(mod, nn.LSTM) else "GRU"
        self.quant = isinstance(mod, qlayers.QuantLSTM | qlayers.QuantGRU)
        self.dirs = 2 if mod.bidirectional else 1
        mode = layer_mode(mod)  # dynamic: DynamicQuantizeLSTM on any target; weight-only: DQ → LSTM
        self.dynamic = self.quant and self.kind == "LSTM" and (
            mode is QuantMode.DYNAMIC or (mode is QuantMode.STATIC and ctx.unsigned))
        self.snapped = self.quant and len(mod.hidden_quants) > 0  # static: outputs on the hidden grids
        if getattr(mod, "proj_size", 0):
            raise ExportError(f"LSTM {node.name!r} uses proj_size, which ONNX LSTM lacks; use proj_size=0")
        if ctx.rank(node.args[0]) != 3:
            raise ExportError(f"{self.kind} {node.name!r} gets an unbatched (2-d) input; export it with a batch "
                              "dimension")

    def suffix(self, layer: int, d: int) -> str:
        return f"_l{layer}" + ("_reverse" if d else "")

    def emit(self):
        ctx, node, mod, b = self.ctx, self.node, self.mod, self.b
        x = ctx.tensor(node.args[0], node)
        if self.quant:
            x = _qdq(ctx, x, mod.input_quant, f"{node.name}.input_quant")
        if mod.batch_first:
            x = _requantize_like(ctx, b.node("Transpose", [x.name], node.name, perm=[1, 0, 2]), x, node.name)
        h0, c0 = self.initial_states()
        x_scale = mod.known_input_scale() if self.quant else None
        hs, cs = [], []
        for layer in range(mod.num_layers):
            if layer > 0 and self.snapped:
                q = mod.layer_input_quants[layer - 1]
                x = _qdq(ctx, x, q, f"{node.name}.layer_input_quants.{layer - 1}")
                x_scale = _scale_of(q)
            y, y_h, y_c = self.layer(layer, x, x_scale, h0, c0)
            hs.append(y_h)
            cs.append(y_c)
            x = y
        out = x
        if self.quant:
            out = _qdq(ctx, out, mod.output_quant, f"{node.name}.output_quant")
        if mod.batch_first:
            out = _requantize_like(ctx, b.node("Transpose", [out.name], node.name, perm=[1, 0, 2]), out, node.name)
        if self.snapped:
            self.ctx.approximate[node] = ("DynamicQuantizeLSTM quantizes activations at run time" if self.dynamic
                                          else "the hidden state stays float inside ONNX " + self.kind)
        elif self.dynamic:  # dynamic mode: each step's hidden state is quantized from its own range, so float
            # rounding in the gates moves a code now and then and it carries over the steps (zoo audio LSTM,
            # 25 steps: 2e-4 relative); weight-only is a float LSTM on dequantized weights, as simulated.
            self.ctx.approximate[node] = "DynamicQuantizeLSTM re-quantizes every step's hidden state at run time"
        if not _state_users(node):
            return out, PyValue(None) if self.kind == "GRU" else (PyValue(None), PyValue(None))
        h_n = TensorValue(b.node("Concat", hs, node.name, axis=0) if len(hs) > 1 else hs[0])
        if self.kind == "GRU":
            return out, h_n
        return out, (h_n, TensorValue(b.node("Concat", cs, node.name, axis=0) if len(cs) > 1 else cs[0]))

    def initial_states(self):
        hx = arg(self.node, 1, "hx", None)
        if hx is None:
            return None, None
        value = self.ctx.value(hx)
        if self.kind == "LSTM":
            if not isinstance(value, tuple) or len(value) != 2:
                raise ExportError(f"LSTM {self.node.name!r} gets an initial state that is not an (h0, c0) pair; "
                                  "pass a tuple of two tensors")
            return value[0], value[1]
        return value, None

    def state_slice(self, state: TensorValue | None, layer: int, d: int | None = None) -> str | None:
        if state is None:
            return None
        start = layer * self.dirs + (d or 0)
        end = start + (1 if d is not None else self.dirs)
        i64 = self.b.int64s
        return self.b.node("Slice", [state.name, i64([start]), i64([end]), i64([0])], self.node.name)

    def layer(self, layer: int, x: TensorValue, x_scale, h0, c0):
        mod, b, name = self.mod, self.b, f"{self.node.name}.l{layer}"
        hidden, gates = mod.hidden_size, len(_GATE_ORDER[self.kind])
        ws, rs, w_scales, r_scales, biases = [], [], [], [], []
        init_h = []
        for d in range(self.dirs):
            sfx = self.suffix(layer, d)
            w_ih, w_hh = getattr(mod, "weight_ih" + sfx), getattr(mod, "weight_hh" + sfx)
            b_ih = getattr(mod, "bias_ih" + sfx) if mod.bias else None
            b_hh = getattr(mod, "bias_hh" + sfx) if mod.bias else None
            if self.quant:
                hq = mod.hidden_quants[layer * self.dirs + d] if self.snapped else None
                if hq is not None:
                    _check_frozen(hq, f"{self.node.name}.hidden_quants")
                for wname in ("weight_ih" + sfx, "weight_hh" + sfx):
                    _check_frozen(mod.weight_quants[wname], f"{self.node.name}.weight_quants.{wname}")
                wq_ih, wq_hh = mod.weight_quants["weight_ih" + sfx], mod.weight_quants["weight_hh" + sfx]
                codes_ih, s_ih, _ = numerics.weight_codes(w_ih, wq_ih, self.node.name)
                codes_hh, s_hh, _ = numerics.weight_codes(w_hh, wq_hh, self.node.name)
                ws.append(_reorder(codes_ih, self.kind))
                rs.append(_reorder(codes_hh, self.kind))
                w_scales.append(_reorder(np.broadcast_to(s_ih, (gates * hidden,)), self.kind))
                r_scales.append(_reorder(np.broadcast_to(s_hh, (gates * hidden,)), self.kind))
                # The biases stay as the layer holds them (float): ONNX LSTM / GRU add them in float, and a
                # module called N times (a decoder step) then stores one B, not N. The simulation snaps them to
                # each call's input/hidden scale × weight scale (int32 grids), which moves a gate input by at
                # most half of that product (~3e-5 on the zoo GRU), inside the recurrent tolerance; stored per
                # call they were 34 kB, 4 % of the zoo GRU seq2seq's fp32 file.
                h = self.state_slice(h0, layer, d)
                if h is not None and hq is not None:  # the simulation quantizes h0 with the step quantizer
                    h = apply_quantizer(self.ctx, TensorValue(h), hq, f"{name}.h0").name
                init_h.append(h)
            else:
                ws.append(_reorder(w_ih.detach().float().numpy(), self.kind))
                rs.append(_reorder(w_hh.detach().float().numpy(), self.kind))
            if b_ih is not None:
                biases.append(np.concatenate([_reorder(t.detach().float().numpy(), self.kind) for t in (b_ih, b_hh)]))
        if self.quant:
            h_init = None if h0 is None else (init_h[0] if self.dirs == 1 else
                                              b.node("Concat", init_h, name, axis=0))
        else:
            h_init = self.state_slice(h0, layer)
        c_init = self.state_slice(c0, layer)
        bias = b.const(np.stack(biases), f"{name}.B") if biases else ""
        attrs = dict(hidden_size=hidden, direction="bidirectional" if self.dirs == 2 else "forward")
        if self.kind == "GRU":
            attrs["linear_before_reset"] = 1
        if self.dynamic:
            w_t = np.stack([c.T for c in ws])  # DynamicQuantizeLSTM takes W as [dirs, in, 4H]
            r_t = np.stack([c.T for c in rs])
            w_s, r_s = np.stack(w_scales).astype(_F32), np.stack(r_scales).astype(_F32)
            inputs = [x.name, b.const(np.ascontiguousarray(w_t), f"{name}.W_quantized"),
                      b.const(np.ascontiguousarray(r_t), f"{name}.R_quantized"), bias, "", h_init or "",
                      c_init or "", "", b.const(w_s, f"{name}.W_scale"),
                      b.const(np.zeros(w_s.shape, np.int8), f"{name}.W_zero_point"),
                      b.const(r_s, f"{name}.R_scale"), b.const(np.zeros(r_s.shape, np.int8), f"{name}.R_zero_point")]
            y, y_h, y_c = b.node("DynamicQuantizeLSTM", inputs, name, n_outputs=3, domain="com.microsoft", **attrs)
        else:
            w_in, r_in = self.weights(ws, rs, w_scales, r_scales, name)
            inputs = [x.name, w_in, r_in, bias, "", h_init or ""] + ([c_init or ""] if self.kind == "LSTM" else [])
            while inputs and inputs[-1] == "":
                inputs.pop()
            outs = b.node(self.kind, inputs, name, n_outputs=3 if self.kind == "LSTM" else 2, **attrs)
            y, y_h = outs[0], outs[1]
            y_c = outs[2] if self.kind == "LSTM" else None
        return self.merge_directions(y, y_h, layer, name) + (y_c,)

    def weights(self, ws, rs, w_scales, r_scales, name: str) -> tuple[str, str]:
        b = self.b
        if not self.quant:
            return b.const(np.stack(ws), f"{name}.W"), b.const(np.stack(rs), f"{name}.R")
        out = []
        for codes, scales, what in ((ws, w_scales, "W"), (rs, r_scales, "R")):
            # One scale per gate row across directions: dequantize the [dirs·G·H, in] matrix along axis 0.
            flat = np.concatenate(codes, axis=0)
            dq = b.dequantized_const(flat, np.concatenate(scales).astype(_F32), 0, f"{name}.{what}")
            out.append(b.node_once("Reshape", [dq, b.int64s([self.dirs, -1, flat.shape[1]])], name))
        return out[0], out[1]

    def merge_directions(self, y: str, y_h: str, layer: int, name: str) -> tuple[TensorValue, str]:
        """ONNX Y [T, dirs, N, H] → [T, N, dirs·H]; in int8 models each direction snapped to its hidden grid."""
        b = self.b
        if not self.snapped:
            if self.dirs == 1:
                return TensorValue(b.node("Squeeze", [y, b.int64s([1])], name)), y_h
            t = b.node("Transpose", [y], name, perm=[0, 2, 1, 3])
            return TensorValue(b.node("Reshape", [t, b.int64s([0, 0, -1])], name)), y_h
        quants = [self.mod.hidden_quants[layer * self.dirs + d] for d in range(self.dirs)]
        if self.dirs == 1:
            seq = apply_quantizer(self.ctx, TensorValue(b.node("Squeeze", [y, b.int64s([1])], name)), quants[0],
                                  f"{name}.hidden_quant")
            return seq, apply_quantizer(self.ctx, TensorValue(y_h), quants[0], f"{name}.hidden_quant").name
        ys = b.node("Split", [y], name, n_outputs=2, axis=1) if b.opset < 18 else \
            b.node("Split", [y], name, n_outputs=2, axis=1, num_outputs=2)
        hs = b.node("Split", [y_h], name, n_outputs=2, axis=0) if b.opset < 18 else \
            b.node("Split", [y_h], name, n_outputs=2, axis=0, num_outputs=2)
        parts = [apply_quantizer(self.ctx, TensorValue(b.node("Squeeze", [part, b.int64s([1])], name)), q,
                                 f"{name}.hidden_quant").name for part, q in zip(ys, quants, strict=True)]
        h_parts = [apply_quantizer(self.ctx, TensorValue(h), q, f"{name}.hidden_quant").name
                   for h, q in zip(hs, quants, strict=True)]
        # The two directions lie on different grids; the next consumer re-quantizes the concatenation.
        return TensorValue(b.node("Concat", parts, name, axis=-1)), b.node("Concat", h_parts, name, axis=0)


@emitter("lstm", "gru")
@emitter("lstm", "gru", quantized=True)
@emitter("lstm", quantized=True, mode="dynamic")  # DynamicQuantizeLSTM (the layer's mode picks it)
@emitter("lstm", "gru", quantized=True, mode="weight-only")  # DQ → LSTM / GRU, float biases and states
def _recurrent(ctx: ExportContext, node: fx.Node, mod: nn.Module):
    return _Rnn(ctx, node, mod).emit()


__all__ = ["RECURRENT_RTOL"]
