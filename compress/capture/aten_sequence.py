"""aten recurrent layers and attention → ``nn.LSTM`` / ``nn.GRU`` modules and decomposed attention.

``aten.lstm.input`` carries the layer's weights as a flat list; the module is rebuilt from their shapes and
named after the user's module (``encoder.rnn``). ``nn.MultiheadAttention`` already arrives decomposed
(linear / bmm / softmax) and stays so; ``scaled_dot_product_attention`` is decomposed here into the same ops.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from compress.capture._aten import _Const, _handles, _Multi, _val

if TYPE_CHECKING:
    from compress.capture.raiser import _Raiser


def _is_zeros(r: _Raiser, node: fx.Node, value: Any) -> bool:
    """Whether an initial hidden state is all zeros (``nn.LSTM`` called without one)."""
    if isinstance(value, _Const):
        return isinstance(value.value, torch.Tensor) and not bool(value.value.any())
    original = node if isinstance(node, fx.Node) else None
    return original is not None and getattr(original.target, "__name__", "").split(".")[0] in (
        "zeros", "zeros_like", "new_zeros")


def _recurrent(cls: type[nn.Module]) -> Any:
    gates = 4 if cls is nn.LSTM else 3

    def handler(r: _Raiser, node: fx.Node, a: dict) -> Any:
        if "data" in a or "batch_sizes" in a:
            r.generic(node, "a packed sequence (pack_padded_sequence)")
        params = [r.const(node, p, "weight") for p in a["params"]]
        layers, bidirectional = int(a["num_layers"]), bool(a["bidirectional"])
        per_direction = 4 if a["has_biases"] else 2
        if len(params) != layers * (2 if bidirectional else 1) * per_direction:
            r.generic(node, "a recurrent layer with projections (proj_size)")
        hidden = params[1].value.shape[1]
        if params[0].value.shape[0] != gates * hidden:
            r.generic(node, "a recurrent layer whose weights do not match its gate count")
        mod = cls(params[0].value.shape[1], hidden, num_layers=layers, bias=bool(a["has_biases"]),
                  batch_first=bool(a["batch_first"]), dropout=float(a["dropout"]), bidirectional=bidirectional)
        with torch.no_grad():
            for name, p in zip(mod._flat_weights_names, params, strict=True):  # aten's order is nn's order
                getattr(mod, name).copy_(p.value)
        hx = a["hx"]
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        originals = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        zero = all(_is_zeros(r, o, s) for o, s in zip(originals, states, strict=True))
        extra = () if zero else ((tuple(states),) if cls is nn.LSTM else (states[0],))
        out = r.module(mod, node, a["input"], *extra, weight=params[0], key=(cls.__name__, layers))
        outputs = {0: r.fn(operator.getitem, node, out, 0)}
        if cls is nn.LSTM:  # nn.LSTM returns (output, (h, c)); aten.lstm returns (output, h, c)
            state = r.fn(operator.getitem, node, out, 1)
            outputs.update({1: r.fn(operator.getitem, node, state, 0), 2: r.fn(operator.getitem, node, state, 1)})
        else:
            outputs[1] = r.fn(operator.getitem, node, out, 1)
        return _Multi(outputs, str(node.target), "")

    return handler


_handles("lstm")(_recurrent(nn.LSTM))
_handles("gru")(_recurrent(nn.GRU))


@_handles("scaled_dot_product_attention")
def _sdpa(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    q_val, k_val = _val(node, 0), _val(node, 1)
    if a.get("enable_gqa") or not isinstance(q_val, torch.Tensor) or not isinstance(k_val, torch.Tensor):
        r.generic(node, "grouped-query attention (enable_gqa)")
    head_dim = q_val.shape[-1]
    if not isinstance(head_dim, int):
        r.generic(node, "attention whose head size is only known at run time")
    scale = a.get("scale") or 1.0 / math.sqrt(head_dim)
    # softmax(q·kᵀ·scale + mask)·v, the math torch's reference implementation computes; dropout is inference's 0.
    scores = r.fn(torch.matmul, node, a["query"], r.fn(torch.transpose, node, a["key"], -2, -1))
    scores = r.fn(operator.mul, node, scores, float(scale))
    mask = a.get("attn_mask")
    if a.get("is_causal"):
        length, source = q_val.shape[-2], k_val.shape[-2]
        if not (isinstance(length, int) and isinstance(source, int)):
            r.generic(node, "causal attention over a sequence length known only at run time")
        future = _Const(torch.ones(length, source, dtype=torch.bool).triu(1))
        scores = r.fn(torch.masked_fill, node, scores, future, float("-inf"))
    if mask is not None:
        original = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        mask_val = mask.value if isinstance(mask, _Const) else getattr(original, "meta", {}).get("val")
        if isinstance(mask_val, torch.Tensor) and mask_val.dtype == torch.bool:
            scores = r.fn(torch.masked_fill, node, scores, r.fn(torch.logical_not, node, mask), float("-inf"))
        else:
            scores = r.fn(operator.add, node, scores, mask)
    probs = r.fn(torch.softmax, node, scores, dim=-1)
    return r.fn(torch.matmul, node, probs, a["value"])
