"""Integer reference math in plain numpy: the independent oracle the tests check layers and exporters against.

Nothing here imports torch. Every function works on integer arrays the way an int8 runtime does: quantize
with rounding, accumulate in int32, requantize to the output scale with a final rounding and clamp.

Example — an int8 linear layer end to end::

    >>> import numpy as np
    >>> x = np.array([[0.5, -1.0]], dtype=np.float32); w = np.array([[1.0, 2.0]], dtype=np.float32)
    >>> xq = quantize(x, 0.01, 0, -128, 127); wq = quantize(w, 2 / 127, 0, -127, 127, axis=0)
    >>> acc = linear_int32(xq, 0, wq, np.zeros(1, np.int32))
    >>> float(dequantize(acc, 0.01 * 2 / 127, 0)[0, 0])
    -1.5
"""

from __future__ import annotations

import numpy as np


def round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, like ONNX QuantizeLinear


def round_half_away(x: np.ndarray) -> np.ndarray:
    # TFLite reference kernels round half away from zero.
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _expand(v, ndim: int, axis: int | None) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if axis is None or v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None, rounding=round_half_even):
    """float → int (as int64 array), per tensor or per channel along ``axis``."""
    x = np.asarray(x, dtype=np.float64)
    s = _expand(scale, x.ndim, axis)
    z = _expand(zero_point, x.ndim, axis)
    return np.clip(rounding(x / s) + z, qmin, qmax).astype(np.int64)


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return ((q - _expand(zero_point, q.ndim, axis)) * _expand(scale, q.ndim, axis)).astype(np.float32)


def fake_quantize(x, scale, zero_point, qmin, qmax, axis=None, rounding=round_half_even) -> np.ndarray:
    return dequantize(quantize(x, scale, zero_point, qmin, qmax, axis, rounding), scale, zero_point, axis)


def quantize_bias(bias, input_scale: float, weight_scale) -> np.ndarray:
    """int32 bias with scale input_scale × weight_scale (per output channel), zero point 0."""
    s = np.asarray(input_scale, np.float64) * np.asarray(weight_scale, np.float64)
    return np.clip(np.round(np.asarray(bias, np.float64) / s), -(2**31), 2**31 - 1).astype(np.int64)


def linear_int32(xq, x_zp: int, wq, bias_q=None) -> np.ndarray:
    """int32 accumulator of y = x @ W.T + b with x: [..., in], W: [out, in] (weights symmetric, zp 0)."""
    acc = (np.asarray(xq, np.int64) - x_zp) @ np.asarray(wq, np.int64).T
    if bias_q is not None:
        acc = acc + np.asarray(bias_q, np.int64)
    return acc


def matmul_int32(aq, a_zp: int, bq, b_zp: int) -> np.ndarray:
    """int32 accumulator of a @ b for two asymmetric int8 tensors (attention scores, A·V)."""
    return (np.asarray(aq, np.int64) - a_zp) @ (np.asarray(bq, np.int64) - b_zp)


def conv_nd_int32(xq, x_zp: int, wq, bias_q=None, stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """int32 accumulator of an N-d convolution (N = 1 or 2), NC[L|HW] layout, zero padding in the real domain.

    Padding with the zero point (not with 0) is what makes padded taps contribute real zero.
    """
    xq = np.asarray(xq, np.int64)
    wq = np.asarray(wq, np.int64)
    nd = xq.ndim - 2
    stride, padding, dilation = (_tuple(v, nd) for v in (stride, padding, dilation))
    x = xq - x_zp
    pads = [(0, 0), (0, 0)] + [(p, p) for p in padding]
    x = np.pad(x, pads)
    n, cin = x.shape[:2]
    cout, cin_g = wq.shape[:2]
    k = wq.shape[2:]
    out_sp = [
        (x.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)
    ]
    out = np.zeros((n, cout, *out_sp), dtype=np.int64)
    cout_g = cout // groups
    for g in range(groups):
        xg = x[:, g * cin_g:(g + 1) * cin_g]
        wg = wq[g * cout_g:(g + 1) * cout_g]
        for idx in np.ndindex(*k):
            sl = [slice(None), slice(None)]
            for i in range(nd):
                start = idx[i] * dilation[i]
                sl.append(slice(start, start + stride[i] * (out_sp[i] - 1) + 1, stride[i]))
            patch = xg[tuple(sl)]  # [n, cin_g, *out_sp]
            w_tap = wg[(slice(None), slice(None), *idx)]  # [cout_g, cin_g]
            out[:, g * cout_g:(g + 1) * cout_g] += np.einsum("nc...,oc->no...", patch, w_tap)
    if bias_q is not None:
        out = out + np.asarray(bias_q, np.int64).reshape([1, -1] + [1] * nd)
    return out


def requantize(acc, acc_scale, out_scale: float, out_zp: int, qmin: int, qmax: int, axis: int | None = 1,
               rounding=round_half_even) -> np.ndarray:
    """int32 accumulator (scale ``acc_scale``, per channel along ``axis``) → int8 at ``out_scale``."""
    acc = np.asarray(acc, np.float64)
    m = _expand(acc_scale, acc.ndim, axis if np.ndim(acc_scale) else None) / out_scale
    return np.clip(rounding(acc * m) + out_zp, qmin, qmax).astype(np.int64)


def add_int(aq, a_scale, a_zp, bq, b_scale, b_zp, out_scale, out_zp, qmin=-128, qmax=127) -> np.ndarray:
    """int8 elementwise add, computed exactly in the real domain then requantized."""
    real = (np.asarray(aq, np.float64) - a_zp) * a_scale + (np.asarray(bq, np.float64) - b_zp) * b_scale
    return np.clip(np.round(real / out_scale) + out_zp, qmin, qmax).astype(np.int64)


def mul_int(aq, a_scale, a_zp, bq, b_scale, b_zp, out_scale, out_zp, qmin=-128, qmax=127) -> np.ndarray:
    """int8 elementwise multiply: (a - za)(b - zb) in integers, one rescale by sa·sb/so."""
    prod = (np.asarray(aq, np.int64) - a_zp) * (np.asarray(bq, np.int64) - b_zp)
    return np.clip(np.round(prod * (a_scale * b_scale / out_scale)) + out_zp, qmin, qmax).astype(np.int64)


def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, tuple | list) else (v,) * n
