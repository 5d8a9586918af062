"""NCHW → NHWC: the layout bookkeeping of the TFLite exporter.

Each exported value remembers how its TFLite tensor relates to the torch tensor it stands for:

* ``perm``: TFLite axis ``j`` is torch axis ``perm[j]`` (``tfl = torch.permute(perm)``). Convolutions and
  pools produce NHWC values, ``perm = (0, 2, 3, 1)``; torch ``permute`` / ``transpose`` only compose ``perm``
  and emit nothing; elementwise ops, concatenation, reductions and slicing map their axes through ``perm``.
  So a conv → add → conv chain never leaves NHWC and no transpose pairs appear around convolutions.
* ``col_perm``: after ``flatten(1)`` of an NHWC value the TFLite tensor holds the features in (h, w, c) order;
  ``col_perm[j]`` is the torch feature index of TFLite column ``j``. A following dense layer permutes its
  weight columns instead of transposing the activation.

Only ops that really need torch order (a general reshape, LayerNorm over the last axis...) materialize it
with one TRANSPOSE, cached per value.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

NCHW_TO_NHWC = (0, 2, 3, 1)


class Padding(str, Enum):
    """How a convolution / pool window is padded in TFLite."""

    SAME = "same"
    VALID = "valid"
    EXPLICIT = "explicit"  # a PAD op before a VALID window


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def is_identity(perm) -> bool:
    return tuple(perm) == identity(len(perm))


def permute_shape(shape, perm) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def compose_torch_permute(perm, dims) -> tuple[int, ...]:
    """The ``perm`` of ``t.permute(dims)`` when ``t``'s TFLite tensor is ``t.permute(perm)``.

    The TFLite tensor does not change: axis ``j`` holds torch axis ``perm[j]`` of ``t``, which is axis
    ``dims.index(perm[j])`` of the permuted tensor.
    """
    dims = [d % len(perm) for d in dims]
    return tuple(dims.index(p) for p in perm)


def transpose_between(src_perm, dst_perm) -> tuple[int, ...]:
    """The TRANSPOSE ``perm`` attribute taking a tensor in layout ``src_perm`` to layout ``dst_perm``."""
    return tuple(list(src_perm).index(p) for p in dst_perm)


def axis_in(perm, torch_axis: int) -> int:
    """The TFLite axis holding ``torch_axis``."""
    return list(perm).index(torch_axis % len(perm))


def reduced_perm(perm, dims, keepdim: bool) -> tuple[int, ...]:
    """The ``perm`` of a reduction's output over torch axes ``dims`` of a value in layout ``perm``."""
    if keepdim:
        return tuple(perm)
    kept = [p for p in perm if p not in dims]
    order = sorted(kept)
    return tuple(order.index(p) for p in kept)


def flatten_col_perm(c: int, h: int, w: int) -> np.ndarray | None:
    """Torch feature index of each column of an NHWC tensor flattened to ``[N, H·W·C]`` (None: identity)."""
    if h * w == 1:
        return None
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def conv_weight_ohwi(w: np.ndarray) -> np.ndarray:
    """Torch ``[O, I/g, kh, kw]`` (or Conv1d ``[O, I/g, k]``, as kh = 1) → TFLite CONV_2D ``[O, kh, kw, I/g]``."""
    w = w[:, :, None, :] if w.ndim == 3 else w
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


def depthwise_weight_1hwo(w: np.ndarray) -> np.ndarray:
    """Torch depthwise ``[C·m, 1, kh, kw]`` (or ``[C·m, 1, k]``) → TFLite DEPTHWISE_CONV_2D ``[1, kh, kw, C·m]``."""
    w = w[:, :, None, :] if w.ndim == 3 else w
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0))


def space_to_depth_weight(w: np.ndarray, block: int) -> np.ndarray:
    """Torch conv weights ``[O, C, kh, kw]`` of a stride-``block`` conv → TFLite CONV_2D ``[O, ⌈kh/b⌉, ⌈kw/b⌉,
    b²·C]`` of the stride-1 conv over SPACE_TO_DEPTH(b) of the same (padded) input.

    SPACE_TO_DEPTH puts input pixel ``(b·i + dy, b·j + dx)``, channel ``c`` at block ``(i, j)``, channel
    ``(dy·b + dx)·C + c``; tap ``ky = b·qy + dy`` of the strided conv is tap ``qy`` of the new one on that
    channel. Taps past ``k`` (the kernel rounded up to whole blocks) are zero, so they add nothing.

    Example:
        >>> w = np.arange(2 * 3 * 3 * 3).reshape(2, 3, 3, 3)
        >>> v = space_to_depth_weight(w, 2)
        >>> v.shape, int(v[1, 0, 1, (1 * 2 + 0) * 3 + 2]) == int(w[1, 2, 1, 2]), int(v[0, 1, 1, 11])
        ((2, 2, 2, 12), True, 0)
    """
    o, c, kh, kw = w.shape
    qh, qw = -(-kh // block), -(-kw // block)
    full = np.zeros((o, c, qh * block, qw * block), w.dtype)
    full[:, :, :kh, :kw] = w
    # [O, C, qy, dy, qx, dx] → [O, qy, qx, dy, dx, C]: the channel order SPACE_TO_DEPTH writes
    full = full.reshape(o, c, qh, block, qw, block).transpose(0, 2, 4, 3, 5, 1)
    return np.ascontiguousarray(full.reshape(o, qh, qw, block * block * c))


def space_to_depth_pads(size: int, kernel: int, stride: int, before: int, out: int) -> int | None:
    """Rows to pad after an input of ``size`` (``before`` padded first) so that SPACE_TO_DEPTH(``stride``) and a
    stride-1 conv with ``⌈kernel/stride⌉`` taps give ``out`` positions: ``stride·(out + ⌈k/s⌉ − 1) − size −
    before``. None when that is negative (the strided conv never reads the input's last rows; not rewritten).

    Example:
        >>> space_to_depth_pads(112, 7, 2, 3, 56), space_to_depth_pads(33, 3, 2, 1, 17)
        (3, 2)
    """
    after = stride * (out + -(-kernel // stride) - 1) - size - before
    return after if after >= 0 else None


def window_padding(size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
                   ceil_mode: bool = False) -> Padding:
    """Whether TFLite SAME or VALID reproduces torch's symmetric ``pad`` along one spatial axis.

    TFLite SAME pads ``max((out − 1)·stride + k_eff − size, 0)`` in total with the smaller half *before*;
    torch pads ``pad`` on both sides. The windows coincide when both give the same output size and the same
    leading pad; otherwise the exporter writes an explicit PAD and a VALID window.
    """
    k_eff = dilation * (kernel - 1) + 1
    if ceil_mode:
        torch_out = -(-(size + 2 * pad - k_eff) // stride) + 1
        if (torch_out - 1) * stride >= size + pad:
            torch_out -= 1
    else:
        torch_out = (size + 2 * pad - k_eff) // stride + 1
    if pad == 0 and torch_out == (size - k_eff) // stride + 1:
        return Padding.VALID
    same_out = -(-size // stride)
    total = max((same_out - 1) * stride + k_eff - size, 0)
    if same_out == torch_out and total // 2 == pad:
        return Padding.SAME
    return Padding.EXPLICIT


def window_padding_2d(hw, kernel, stride, pad, dilation=(1, 1), ceil_mode: bool = False) -> Padding:
    """:func:`window_padding` for both axes; SAME / VALID only when both axes agree.

    An axis with a 1-wide window, stride 1 and no padding (the H axis of a Conv1d written as a 2-D
    convolution) is the same under SAME and VALID, so it agrees with either.
    """
    modes = {window_padding(hw[i], kernel[i], stride[i], pad[i], dilation[i], ceil_mode) for i in range(2)
             if (kernel[i], stride[i], pad[i]) != (1, 1, 0)}
    if not modes:
        return Padding.VALID
    return modes.pop() if len(modes) == 1 else Padding.EXPLICIT


def pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))
