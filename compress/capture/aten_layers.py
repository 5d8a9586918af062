"""aten ops that carry weights → torch.nn modules holding them, named after the original parameters.

``aten.conv2d(x, p_layer1_0_conv1_weight, ...)`` becomes a call of an ``nn.Conv2d`` stored at
``layer1.0.conv1``: the passes swap modules for quant layers, and ``keep_float`` names the user's paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from compress.capture._aten import _EVAL_HINT, _Const, _handles, _Multi, _param, _rank, _tuple, _weighted
from compress.errors import ModelLoadError

if TYPE_CHECKING:
    from compress.capture.raiser import _Raiser


@_handles("conv1d", "conv2d", "convolution", "_convolution")
def _conv(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, b = r.const(node, a["weight"], "weight"), r.const(node, a["bias"], "bias", optional=True)
    n = w.value.dim() - 2
    if n not in (1, 2):
        r.generic(node, "3-d convolution")
    if a.get("transposed"):
        return _transposed(r, node, a, w, b, n)
    if any(int(p) != 0 for p in a.get("output_padding") or ()):
        r.generic(node, "output padding on a forward convolution")
    groups, padding = int(a["groups"]), a["padding"]
    hyper = dict(stride=_tuple(a["stride"], n), padding=padding if isinstance(padding, str) else _tuple(padding, n),
                 dilation=_tuple(a["dilation"], n), groups=groups, bias=b is not None)
    cls = nn.Conv1d if n == 1 else nn.Conv2d
    mod = cls(w.value.shape[1] * groups, w.value.shape[0], tuple(w.value.shape[2:]), **hyper)
    return _weighted(r, node, mod, a["input"], w, b, tuple(hyper.items()))


@_handles("conv_transpose1d", "conv_transpose2d")
def _conv_transpose(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, b = r.const(node, a["weight"], "weight"), r.const(node, a["bias"], "bias", optional=True)
    n = w.value.dim() - 2
    if n not in (1, 2):
        r.generic(node, "3-d transposed convolution")
    return _transposed(r, node, a, w, b, n)


def _transposed(r: _Raiser, node: fx.Node, a: dict, w: _Const, b: _Const | None, n: int) -> fx.Node:
    # The weight of a transposed convolution is [in, out / groups, k...]: output channels on axis 1.
    groups = int(a["groups"])
    if isinstance(a["padding"], str):
        r.generic(node, "string padding on a transposed convolution")
    hyper = dict(stride=_tuple(a["stride"], n), padding=_tuple(a["padding"], n),
                 output_padding=_tuple(a.get("output_padding") or 0, n), groups=groups, bias=b is not None,
                 dilation=_tuple(a["dilation"], n))
    cls = nn.ConvTranspose1d if n == 1 else nn.ConvTranspose2d
    mod = cls(w.value.shape[0], w.value.shape[1] * groups, tuple(w.value.shape[2:]), **hyper)
    return _weighted(r, node, mod, a["input"], w, b, ("transposed", *hyper.items()))


def _linear(r: _Raiser, node: fx.Node, x: Any, w: _Const, b: _Const | None, weight: torch.Tensor) -> fx.Node:
    mod = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
    return _weighted(r, node, mod, x, w, b, (tuple(weight.shape),), weight)


@_handles("linear")
def _linear_op(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["weight"], "weight")
    return _linear(r, node, a["input"], w, r.const(node, a["bias"], "bias", optional=True), w.value)


@_handles("addmm")
def _addmm(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, b = r.const(node, a["mat2"], "weight"), r.const(node, a["self"], "bias")  # mat2: linear's weight, transposed
    if b.value.numel() != w.value.shape[1] or a["alpha"] != 1 or a["beta"] != 1:
        r.generic(node, "addmm with alpha/beta or a bias that is not one value per output")
    return _linear(r, node, a["mat1"], w, b, w.value.t())


@_handles("mm", "matmul", "bmm")
def _matmul(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    x, other = a["self"], a.get("mat2", a.get("other"))
    if isinstance(other, _Const) and other.value.dim() == 2 and not isinstance(x, _Const):
        return _linear(r, node, x, other, None, other.value.t())  # x @ W with a constant W: a linear layer
    return r.fn(torch.matmul, node, x, other)


@_handles("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")
def _batch_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if a.get("training"):
        raise ModelLoadError(f"{r.source}: BatchNorm node {node.name!r} uses batch statistics: the model was "
                             f"exported in training mode; {_EVAL_HINT}")
    mean, var = r.const(node, a["running_mean"], "running mean"), r.const(node, a["running_var"], "running var")
    w, b = r.const(node, a["weight"], "weight", optional=True), r.const(node, a["bias"], "bias", optional=True)
    rank, eps = _rank(node), float(a["eps"])
    if rank not in (2, 3, 4):
        r.generic(node, f"batch norm over a {rank}-d input")
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    mod = cls(mean.value.numel(), eps=eps, momentum=float(a["momentum"]), affine=w is not None or b is not None)
    mod.running_mean.copy_(mean.value)
    mod.running_var.copy_(var.value)
    if mod.affine:
        mod.weight = _param(w.value if w else torch.ones_like(mean.value))
        mod.bias = _param(b.value if b else torch.zeros_like(mean.value))
    out = r.module(mod, node, a["input"], weight=w or mean, key=(id(mean), id(b), eps))
    if node.target.overloadpacket.__name__ == "batch_norm":
        return out
    return _Multi({0: out}, str(node.target), _EVAL_HINT)  # outputs 1, 2: the batch statistics of training


@_handles("layer_norm", "native_layer_norm")
def _layer_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    w, b = r.const(node, a["weight"], "weight", optional=True), r.const(node, a["bias"], "bias", optional=True)
    mod = nn.LayerNorm(list(a["normalized_shape"]), eps=float(a["eps"]), elementwise_affine=w is not None,
                       bias=b is not None)
    if w is not None:
        mod.weight = _param(w.value)
    if b is not None:
        mod.bias = _param(b.value)
    out = r.module(mod, node, a["input"], weight=w, key=(id(b), float(a["eps"])))
    if node.target.overloadpacket.__name__ == "layer_norm":
        return out
    return _Multi({0: out}, str(node.target), "use only the normalized output")


@_handles("embedding")
def _embedding(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, pad = r.const(node, a["weight"], "weight"), int(a["padding_idx"])
    mod = nn.Embedding(*w.value.shape, padding_idx=None if pad < 0 else pad)
    return _weighted(r, node, mod, a["indices"], w, None, (pad,))


@_handles("prelu", "_prelu_kernel")
def _prelu(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["weight"], "weight")
    x_rank = _rank(node)
    if w.value.numel() > 1 and x_rank is not None and x_rank < 2:
        r.generic(node, "a per-channel PReLU on a 1-d input")
    if node.target.overloadpacket.__name__ == "_prelu_kernel" and w.value.numel() > 1 and w.value.dim() != (
            (x_rank or 2) - 1):
        r.generic(node, "a _prelu_kernel weight not broadcast as [C, 1, ...]")  # core aten reshapes it first
    mod = nn.PReLU(w.value.numel())
    return _weighted(r, node, mod, a["self"], w, None, ("prelu",), w.value.reshape(-1))


@_handles("dropout", "feature_dropout", "alpha_dropout")
def _dropout(r: _Raiser, node: fx.Node, a: dict) -> Any:
    # Exported in eval mode it computes nothing, but QAT sets the graph to train mode: keep it as the module
    # it was, so training regularises as the user's model did.
    if float(a.get("p") or 0.0) <= 0.0 or node.target.overloadpacket.__name__ != "dropout":
        return a["input"]
    return r.module(nn.Dropout(float(a["p"])), node, a["input"])


def _pool(cls: type[nn.Module], multi: bool = False) -> Any:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> Any:
        n = 2 if cls.__name__.endswith("2d") else 1
        kernel = _tuple(a["kernel_size"], n)
        extra = {k: a[k] for k in ("dilation", "count_include_pad", "divisor_override") if a.get(k) is not None}
        mod = cls(kernel, _tuple(a["stride"], n) if a["stride"] else kernel, _tuple(a["padding"], n),
                  ceil_mode=bool(a["ceil_mode"]), **extra)
        out = r.module(mod, node, a["self"])
        fix = "use only the pooled values (return_indices=False)"
        return _Multi({0: out}, str(node.target), fix) if multi else out

    return handler


for _name, _cls in (("max_pool2d", nn.MaxPool2d), ("max_pool1d", nn.MaxPool1d), ("avg_pool2d", nn.AvgPool2d),
                    ("avg_pool1d", nn.AvgPool1d)):
    _handles(_name)(_pool(_cls))
_handles("max_pool2d_with_indices")(_pool(nn.MaxPool2d, multi=True))


@_handles("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool1d")
def _adaptive_pool(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if node.target.overloadpacket.__name__.endswith("1d"):
        return r.module(nn.AdaptiveAvgPool1d(_tuple(a["output_size"], 1)[0]), node, a["self"])
    size = _tuple(a["output_size"], 2)
    return r.module(nn.AdaptiveAvgPool2d(size[0] if size[0] == size[1] else size), node, a["self"])
