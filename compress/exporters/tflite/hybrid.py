"""How LiteRT's dynamic-range (hybrid) kernels quantize their float input, in numpy: the one home of it.

Hybrid FULLY_CONNECTED, CONV_2D and the fused LSTM quantize their float input on every call, one scale per
batch row (tensor_utils ``BatchQuantizeFloats``); the verification of each of them (the fused LSTM reference in
:mod:`~compress.exporters.tflite.verify`, the hybrid FC / conv references in
:mod:`~compress.exporters.tflite.verify_dynamic`) reads the codes from here.
"""

from __future__ import annotations

import numpy as np


def round_away(v: np.ndarray) -> np.ndarray:
    """TfLiteRound: halves away from zero (numpy's ``round`` is half to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_rows(x: np.ndarray, asymmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int32 codes, float32 scale [rows], int32 zero point [rows]) per row of a float ``[rows, K]`` batch.

    Asymmetric: the row's range with 0 in it (taken in double) over 255 steps, the zero point from the end with
    the smaller error, rounded and kept on [-128, 127]; symmetric: max |x| / 127, zero point 0, codes on
    [-127, 127]. An all-zero row gets scale 1 and codes 0. The code is the zero point plus ``x · (1 / scale)``
    rounded half away from zero in float32: what LiteRT 2.3's x86 kernel reproduces (on the zoo audio LSTM,
    40 of 48 layer runs bit-exact; rounding ``zero point + x · (1 / scale)`` as one float32 sum, as TF's
    portable code reads, or rounding halves to even: 7 to 16 of 48).

    Example:
        >>> codes, scale, zp = quantize_rows(np.array([[0.0, 1.0, -0.5]], np.float32), asymmetric=True)
        >>> codes.tolist(), round(float(scale[0]), 6), int(zp[0])
        ([[-43, 127, -128]], 0.005882, -43)
        >>> quantize_rows(np.array([[0.0, 1.0, 2.55]], np.float32))[0].tolist()
        [[-128, -28, 127]]
    """
    x = np.asarray(x, np.float32)
    lo = np.minimum(x.min(axis=1, initial=0.0), 0.0).astype(np.float64)
    hi = np.maximum(x.max(axis=1, initial=0.0), 0.0).astype(np.float64)
    flat = lo == hi
    if asymmetric:
        scale = np.where(flat, 1.0, (hi - lo) / 255.0)  # all-zero rows: 1, as the kernel
        from_min, from_max = -128.0 - lo / scale, 127.0 - hi / scale
        zp = np.where(128.0 + np.abs(lo / scale) < 127.0 + np.abs(hi / scale), from_min, from_max)
        zp = np.where(zp <= -128, -128, np.where(zp >= 127, 127, round_away(zp))).astype(np.int32)
        qmin = -128
    else:
        scale = np.where(flat, 1.0, np.maximum(-lo, hi) / 127.0)
        zp = np.zeros(len(x), np.int32)
        qmin = -127
    scale32 = scale.astype(np.float32)
    inv = (1.0 / scale32.astype(np.float64)).astype(np.float32)
    codes = np.clip(zp[:, None] + round_away(x * inv[:, None]), qmin, 127).astype(np.int32)
    codes[flat], zp[flat] = 0, 0
    return codes, scale32, zp
