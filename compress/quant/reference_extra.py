"""More numpy integer reference math: the ops beyond conv / linear (attention, recurrences, LUT activations,
pooling, normalisation), written the way an int8 runtime computes them.

Like :mod:`compress.quant.reference` this module never imports torch: it is the independent oracle the layer
tests compare against. Matmuls accumulate integers in int64 (a superset of int32 that cannot overflow here);
what a runtime does in float (softmax, sigmoid/tanh gates, LayerNorm statistics) is done in float64 on the
dequantized integers, then quantized to the output grid.

Example — a lookup-table activation on int8 codes::

    >>> import numpy as np
    >>> xq = np.array([-128, 0, 127])
    >>> lut_activation(xq, 0.05, 0, np.tanh, 1 / 128, 0, -128, 127).tolist()
    [-128, 0, 127]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compress.quant.reference import (
    dequantize,
    linear_int32,
    matmul_int32,
    quantize,
    quantize_bias,
    requantize,
)

INT8 = (-128, 127)
WEIGHT_INT8 = (-127, 127)


def symmetric_scale(w, axis: int | None = 0, qmax: int = 127) -> np.ndarray:
    """Symmetric weight scale max|w| / qmax, per slice along ``axis`` (or one for the tensor)."""
    w = np.abs(np.asarray(w, np.float64))
    if axis is None:
        amax = np.asarray(w.max())
    else:
        amax = w.max(axis=tuple(d for d in range(w.ndim) if d != axis % w.ndim))
    return np.maximum(amax / qmax, 1e-8)


def quantize_weight(w, axis: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight codes, scales) of a symmetric narrow-range weight."""
    scale = symmetric_scale(w, axis)
    return quantize(w, scale, 0, *WEIGHT_INT8, axis=axis), scale


def lsb_agreement(actual, expected, scale) -> tuple[float, float]:
    """(fraction of elements within 1 LSB, max difference in LSB) of two dequantized tensors."""
    diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)) / np.asarray(scale, np.float64)
    # A hair above 1 is float32 noise in the dequantized values, not a second LSB.
    return float(np.mean(diff <= 1.0 + 1e-3)), float(diff.max(initial=0.0))


def lut_activation(xq, x_scale, x_zp, fn: Callable[[np.ndarray], np.ndarray], out_scale, out_zp,
                   qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """An activation as an int8 lookup table: every input code maps through ``fn`` to an output code."""
    return quantize(fn(dequantize(xq, x_scale, x_zp).astype(np.float64)), out_scale, out_zp, qmin, qmax)


def softmax_int(scores_q, s_scale, s_zp, out_scale, out_zp, axis: int = -1, qmin: int = -128,
                qmax: int = 127) -> np.ndarray:
    """Softmax of int8 (or int32-accumulated) scores computed in float, quantized to the output grid."""
    s = (np.asarray(scores_q, np.float64) - s_zp) * s_scale
    return quantize(softmax(s, axis), out_scale, out_zp, qmin, qmax)


def softmax(x, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def layer_norm_int(xq, x_scale, x_zp, gamma, beta, eps: float, out_scale, out_zp, ndims: int = 1,
                   qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """LayerNorm over the last ``ndims`` axes of int8 input, float statistics, int8 output."""
    x = (np.asarray(xq, np.float64) - x_zp) * x_scale
    axes = tuple(range(-ndims, 0))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64)
    if beta is not None:
        y = y + np.asarray(beta, np.float64)
    return quantize(y, out_scale, out_zp, qmin, qmax)


def pool2d_windows(x, kernel: int, stride: int, pad_value=0, padding: int = 0) -> np.ndarray:
    """[N, C, OH, OW, k*k] windows of an NCHW array (no dilation, floor mode)."""
    x = np.pad(np.asarray(x), [(0, 0), (0, 0), (padding, padding), (padding, padding)], constant_values=pad_value)
    n, c, h, w = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    out = np.empty((n, c, oh, ow, kernel * kernel), dtype=x.dtype)
    for i in range(kernel):
        for j in range(kernel):
            out[..., i * kernel + j] = x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
    return out


def avg_pool2d_int(xq, x_scale, x_zp, kernel: int, stride: int, out_scale, out_zp, padding: int = 0,
                   qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Average pooling as an int8 kernel does it: integer sum of (q - zp), one rescale by s_in / (count·s_out).

    Padding counts as real zero in the divisor (``count_include_pad=True``).
    """
    centred = np.asarray(xq, np.int64) - x_zp
    total = pool2d_windows(centred, kernel, stride, 0, padding).sum(axis=-1)
    real_mean = total * (x_scale / (kernel * kernel))
    return quantize(real_mean, out_scale, out_zp, qmin, qmax)


def max_pool2d_int(xq, kernel: int, stride: int) -> np.ndarray:
    """Max pooling on codes: the output keeps the input's scale and zero point."""
    return pool2d_windows(np.asarray(xq, np.int64), kernel, stride).max(axis=-1)


def concat_int(inputs, axis: int, out_scale, out_zp, qmin: int = -128, qmax: int = 127) -> np.ndarray:
    """Concatenate int8 tensors ``[(q, scale, zp), ...]`` after requantizing each to the output grid."""
    parts = [quantize(dequantize(q, s, z).astype(np.float64), out_scale, out_zp, qmin, qmax) for q, s, z in inputs]
    return np.concatenate(parts, axis=axis)


def rnn_direction_int(kind: str, xq, x_scale, x_zp, w_ih, w_hh, b_ih, b_hh, h0, c0, h_scale, h_zp,
                      reverse: bool = False):
    """One layer, one direction of an int8 LSTM or GRU (time-major ``xq``: [T, N, F] codes).

    Weights are quantized here (symmetric per gate row); biases go to int32 at input/hidden scale × weight
    scale. Both matmuls accumulate in integers; gates, the cell state and the hidden update run in float64;
    the new hidden state is quantized to (``h_scale``, ``h_zp``) every step. ``h0`` / ``c0`` are float.

    Returns:
        (h codes [T, N, H], final h codes [N, H], final c float [N, H] or None for GRU)
    """
    wq_ih, s_ih = quantize_weight(w_ih)
    wq_hh, s_hh = quantize_weight(w_hh)
    bq_ih = None if b_ih is None else quantize_bias(b_ih, x_scale, s_ih)
    bq_hh = None if b_hh is None else quantize_bias(b_hh, h_scale, s_hh)
    hq = quantize(h0, h_scale, h_zp, *INT8)
    c = None if c0 is None else np.asarray(c0, np.float64)
    steps = range(len(xq) - 1, -1, -1) if reverse else range(len(xq))
    out = np.zeros((len(xq), *hq.shape), np.int64)
    for t in steps:
        gx = linear_int32(xq[t], x_zp, wq_ih, bq_ih) * (x_scale * s_ih)
        gh = linear_int32(hq, h_zp, wq_hh, bq_hh) * (h_scale * s_hh)
        h_prev = dequantize(hq, h_scale, h_zp).astype(np.float64)
        if kind == "lstm":
            i, f, g, o = np.split(gx + gh, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            xr, xz, xn = np.split(gx, 3, axis=-1)
            hr, hz, hn = np.split(gh, 3, axis=-1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            n = np.tanh(xn + r * hn)
            h = (1 - z) * n + z * h_prev
        hq = quantize(h, h_scale, h_zp, *INT8)
        out[t] = hq
    return out, hq, c


def attention_int(q_in, k_in, v_in, weights: dict, qp: dict, num_heads: int, additive_mask=None) -> np.ndarray:
    """Multi-head attention as an int8 runtime computes it (time-major [L, N, E] int8 inputs).

    Args:
        q_in, k_in, v_in: int8 codes of query / key / value, with qparams ``qp["x_q"]``, ``qp["x_k"]``,
            ``qp["x_v"]`` (each ``(scale, zero_point)``).
        weights: float ``wq, wk, wv, wo`` ([out, in]) and biases ``bq, bk, bv, bo`` (or None).
        qp: ``(scale, zp)`` of ``q`` (after the 1/sqrt(head_dim) scaling), ``k``, ``v``, ``p`` (softmax
            probabilities), ``ctx`` (attention context, input of the out-projection) and ``out``.
        num_heads: number of heads.
        additive_mask: float [L, S] or [N*H, L, S] term added to the scores (-inf = masked).

    Returns:
        int8 codes of the output [L, N, E].
    """
    head_dim = weights["wq"].shape[0] // num_heads

    def project(xq, x_qp, w, b, extra_scale, out_qp):
        wq, sw = quantize_weight(w)
        bq = None if b is None else quantize_bias(b, x_qp[0], sw)
        acc = linear_int32(xq, x_qp[1], wq, bq)
        return requantize(acc, x_qp[0] * sw * extra_scale, out_qp[0], out_qp[1], *INT8, axis=-1)

    q = project(q_in, qp["x_q"], weights["wq"], weights["bq"], head_dim**-0.5, qp["q"])
    k = project(k_in, qp["x_k"], weights["wk"], weights["bk"], 1.0, qp["k"])
    v = project(v_in, qp["x_v"], weights["wv"], weights["bv"], 1.0, qp["v"])
    tgt, bsz, embed = q.shape
    heads = lambda t: t.reshape(t.shape[0], bsz * num_heads, head_dim).transpose(1, 0, 2)  # noqa: E731
    qh, kh, vh = heads(q), heads(k), heads(v)
    scores = matmul_int32(qh, qp["q"][1], kh.transpose(0, 2, 1), qp["k"][1]) * (qp["q"][0] * qp["k"][0])
    if additive_mask is not None:
        scores = scores + np.asarray(additive_mask, np.float64)
    p = quantize(softmax(scores), qp["p"][0], qp["p"][1], *INT8)
    acc = matmul_int32(p, qp["p"][1], vh, qp["v"][1])
    ctx = requantize(acc, qp["p"][0] * qp["v"][0], qp["ctx"][0], qp["ctx"][1], *INT8, axis=None)
    ctx = ctx.transpose(1, 0, 2).reshape(tgt, bsz, embed)
    wo, so = quantize_weight(weights["wo"])
    bo = None if weights["bo"] is None else quantize_bias(weights["bo"], qp["ctx"][0], so)
    acc = linear_int32(ctx, qp["ctx"][1], wo, bo)
    return requantize(acc, qp["ctx"][0] * so, qp["out"][0], qp["out"][1], *INT8, axis=-1)
