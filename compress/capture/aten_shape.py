"""aten views, indexing, padding, resizing, casts and tensor constructors → torch functions and methods.

Sizes stay symbolic where the program has them symbolic (the batch dimension): ``aten.zeros([s0, 8])`` becomes
``torch.zeros([x.size(0), 8])`` and a constant when every size is known, so the raised graph runs at other
batch sizes than the exported one.
"""

from __future__ import annotations

import math
import operator
import sys
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from compress.capture._aten import _Const, _dims, _handles, _rank, _scalar, _val

if TYPE_CHECKING:
    from compress.capture.raiser import _Raiser


# --- views --------------------------------------------------------------------------------------------------
@_handles("view", "_unsafe_view", "reshape", "view_copy")
def _reshape(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    src, out = _val(node), _val(node, None)
    if isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and 1 <= out.dim() < src.dim():
        k = out.dim() - 1
        if [str(d) for d in src.shape[:k]] == [str(d) for d in out.shape[:k]]:
            # x.view(x.size(0), -1) is a flatten: written so, it keeps working for batch sizes other than export's.
            return r.fn(torch.flatten, node, a["self"], k)
    return r.fn(torch.reshape, node, a["self"], list(a["size"] if "size" in a else a["shape"]))


@_handles("transpose", "t")
def _transpose(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if "dim0" not in a and (_rank(node) or 2) < 2:
        return a["self"]  # .t() of a vector
    return r.fn(torch.transpose, node, a["self"], int(a.get("dim0", 0)), int(a.get("dim1", 1)))


@_handles("squeeze")
def _squeeze(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    dim = a.get("dim")  # squeeze.default: none; squeeze.dim: an int; squeeze.dims: a list
    if dim is None:
        return r.fn(torch.squeeze, node, a["self"])
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    return r.fn(torch.squeeze, node, a["self"], dims[0] if len(dims) == 1 else dims)


@_handles("select", "slice")
def _index(r: _Raiser, node: fx.Node, a: dict) -> Any:
    rank = _rank(node)
    dim = int(a["dim"]) % rank if rank else int(a["dim"])
    if "index" in a:
        key: Any = a["index"]
    elif a["start"] in (None, 0) and a["step"] == 1 and a["end"] in (None, sys.maxsize):
        return a["self"]  # x[:] over a whole (dynamic) dimension
    else:
        key = slice(a["start"], a["end"], None if a["step"] == 1 else a["step"])
    return r.fn(operator.getitem, node, a["self"], (*[slice(None)] * dim, key))


_handles("flatten")(lambda r, node, a: r.fn(torch.flatten, node, a["self"], int(a["start_dim"]), int(a["end_dim"])))
_handles("permute")(lambda r, node, a: r.fn(torch.permute, node, a["self"], list(a["dims"])))
_handles("unsqueeze")(lambda r, node, a: r.fn(torch.unsqueeze, node, a["self"], int(a["dim"])))
_handles("unflatten")(lambda r, node, a: r.fn(torch.unflatten, node, a["self"], _dims(node, a["dim"])[0],
                                               list(a["sizes"])))
_handles("cat", "concat", "concatenate")(lambda r, node, a: r.fn(torch.cat, node, list(a["tensors"]),
                                                                  dim=int(a["dim"])))
@_handles("stack")
def _stack(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    # stack = cat of unsqueezed tensors: two forms the registry already has, rather than a third.
    rank = _val(node, None).dim()
    dim = int(a["dim"]) % rank
    return r.fn(torch.cat, node, [r.fn(torch.unsqueeze, node, t, dim) for t in a["tensors"]], dim=dim)


_handles("expand")(lambda r, node, a: r.method("expand", node, a["self"], *a["size"]))
_handles("expand_as")(lambda r, node, a: r.method("expand_as", node, a["self"], a["other"]))
_handles("repeat")(lambda r, node, a: r.method("repeat", node, a["self"], *a["repeats"]))


# --- splitting and gathering --------------------------------------------------------------------------------
@_handles("split", "split_with_sizes")
def _split(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    sizes = a.get("split_size", a.get("split_sizes"))
    return r.fn(torch.split, node, a["self"], list(sizes) if isinstance(sizes, (list, tuple)) else sizes,
                _dims(node, a["dim"])[0])


@_handles("chunk")
def _chunk(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    dim, src = _dims(node, a["dim"])[0], _val(node)
    length = src.shape[dim] if isinstance(src, torch.Tensor) else None
    if not isinstance(length, int):
        r.generic(node, "chunk along a dimension whose size is only known at run time")
    # torch.chunk's pieces are ceil(n / chunks) long (the last one shorter): the same as this split.
    return r.fn(torch.split, node, a["self"], math.ceil(length / int(a["chunks"])), dim)


_handles("unbind")(lambda r, node, a: r.fn(torch.unbind, node, a["self"], _dims(node, a["dim"])[0]))
_handles("gather")(lambda r, node, a: r.fn(torch.gather, node, a["self"], _dims(node, a["dim"])[0], a["index"]))
_handles("index_select")(lambda r, node, a: r.fn(torch.index_select, node, a["self"], _dims(node, a["dim"])[0],
                                                  a["index"]))


@_handles("index")
def _index_tensor(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    indices = list(a["indices"])
    used = [i for i, t in enumerate(indices) if t is not None]
    originals = node.args[1] if len(node.args) > 1 else ()
    if len(used) == 1:
        d = used[0]
        original = originals[d] if d < len(originals) else None
        val = original.meta.get("val") if isinstance(original, fx.Node) else None
        if isinstance(val, torch.Tensor) and val.dim() == 1 and val.dtype in (torch.int64, torch.int32):
            return r.fn(torch.index_select, node, a["self"], d, indices[d])  # x[:, idx]
    r.generic(node, "indexing with several index tensors or a multi-dimensional one")


# --- padding and resizing -----------------------------------------------------------------------------------
_PAD_MODES = {"constant_pad_nd": "constant", "reflection_pad1d": "reflect", "reflection_pad2d": "reflect",
              "replication_pad1d": "replicate", "replication_pad2d": "replicate"}


@_handles("pad", *_PAD_MODES)
def _pad(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    name = node.target.overloadpacket.__name__
    mode = _PAD_MODES.get(name) or a.get("mode") or "constant"
    if mode not in ("constant", "reflect", "replicate"):
        r.generic(node, f"{mode} padding")
    pad = [int(p) if isinstance(p, int) else p for p in a.get("pad", a.get("padding"))]
    # A zero pad before a conv stays explicit: the exporters decide whether it folds into the conv.
    if mode == "constant":
        return r.fn(F.pad, node, a["self"], pad, mode="constant", value=float(a.get("value") or 0.0))
    return r.fn(F.pad, node, a["self"], pad, mode=mode)


@_handles("upsample_nearest2d", "upsample_bilinear2d")
def _upsample(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    mode = "bilinear" if "bilinear" in node.target.overloadpacket.__name__ else "nearest"
    scales = a.get("scale_factors")
    if scales is None and a.get("scales_h") is not None and a.get("scales_w") is not None:
        scales = [a["scales_h"], a["scales_w"]]
    size = a.get("output_size", a.get("input_size"))
    # A scale factor keeps working for inputs of other sizes than the export's; a size is only used without.
    kwargs: dict[str, Any] = dict(size=None if scales else list(size), mode=mode,
                                  scale_factor=[float(s) for s in scales] if scales else None,
                                  align_corners=bool(a["align_corners"]) if mode == "bilinear" else None)
    return r.fn(F.interpolate, node, a["input"] if "input" in a else a["self"], **kwargs)


# --- casts, sizes, copies -----------------------------------------------------------------------------------
_handles("sym_size")(lambda r, node, a: r.method("size", node, a["self"], int(a["dim"])))


@_handles("_to_copy", "to", "type_as")
def _cast(r: _Raiser, node: fx.Node, a: dict) -> Any:
    src, out = _val(node), _val(node, None)
    if isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor):
        dtype = None if src.dtype == out.dtype else out.dtype
    else:
        dtype = a.get("dtype")
    return a["self"] if dtype is None else r.method("to", node, a["self"], dtype)  # a device move is dropped


# Inference: copies change nothing.
_handles("contiguous", "clone", "alias", "detach", "lift_fresh_copy")(
    lambda r, node, a: a["self"] if "self" in a else a["input"])


# --- tensor constructors ------------------------------------------------------------------------------------
def _sizes(r: _Raiser, node: fx.Node, like: Any) -> list[Any] | None:
    """The output's sizes, ints where known and ``like.size(i)`` nodes where symbolic; None when all known."""
    out = _val(node, None)
    if all(isinstance(d, int) for d in out.shape):
        return None
    if not isinstance(like, fx.Node) or _rank(node) != out.dim():
        r.generic(node, "a tensor constructor whose symbolic size comes from no input")
    return [d if isinstance(d, int) else r.method("size", node, like, i) for i, d in enumerate(out.shape)]


def _constructor(fill: Any) -> Any:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> Any:
        value = _scalar(a.get("fill_value", a.get("value"))) if fill is None else fill
        if not isinstance(value, (int, float, bool)):
            r.generic(node, "a fill value computed at run time")
        out = _val(node, None)
        name = node.target.overloadpacket.__name__.rstrip("_")  # fill_ (in place) is fill
        if name.endswith("_like") or name == "fill":  # fill(x, v): x's shape and dtype, every value v
            sizes = _sizes(r, node, a["self"])
        else:
            sizes = list(a["size"])
            if all(isinstance(s, int) for s in sizes):
                sizes = None
        if sizes is None:  # every size known: a constant, stored once
            return _Const(torch.full(tuple(out.shape), value, dtype=out.dtype))
        if value == 0:
            return r.fn(torch.zeros, node, sizes, dtype=out.dtype)
        if value == 1:
            return r.fn(torch.ones, node, sizes, dtype=out.dtype)
        return r.fn(torch.full, node, sizes, value, dtype=out.dtype)

    return handler


# torch.empty(...).fill_(v) (a start token per batch row): empty's values are never read, zeros stand in.
_handles("zeros", "zeros_like", "new_zeros", "empty", "empty_like", "new_empty")(_constructor(0))
_handles("ones", "ones_like", "new_ones")(_constructor(1))
_handles("full", "full_like", "new_full", "fill")(_constructor(None))


@_handles("arange")
def _arange(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    # Only reached with a symbolic bound (constant ones are folded): positions over the sequence length.
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    out = _val(node, None)
    return r.fn(torch.arange, node, start, end, step, dtype=out.dtype)
