"""Channel rules for LSTM / GRU hidden units and for indexing (``out[:, -1, :]``, ``lstm(x)[0]``).

A hidden unit of a (unidirectional, unprojected) ``nn.LSTM`` / ``nn.GRU`` owns one row in each gate block of
every layer's ``weight_ih`` / ``weight_hh`` / biases, one column of ``weight_hh`` and, above the first layer,
one column of the next layer's ``weight_ih``. ``nn.LSTM`` has one ``hidden_size`` for all layers, so the
layers share one space (the same units are kept in every layer), which is also what the output carries.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from compress.passes.prune.layout import Layout, Member, _shape

_RNN = (nn.LSTM, nn.GRU)


def gates(module: nn.Module) -> int:
    return 4 if isinstance(module, nn.LSTM) else 3


def hidden_rows(module: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Row indices of the kept units in every gate block (``[i, f, g, o]`` or ``[r, z, n]``)."""
    h = module.hidden_size
    return torch.cat([g * h + index for g in range(gates(module))])


def slice_rnn(module: nn.Module, role: str, index: torch.Tensor, slice_fn) -> None:
    """Cut the kept hidden units (``hidden``) or input columns (``in``) out of an LSTM / GRU, in place."""
    if role == "in":
        slice_fn(module, "weight_ih_l0", 1, index)
        module.input_size = len(index)
        return
    rows = hidden_rows(module, index)
    for k in range(module.num_layers):
        slice_fn(module, f"weight_ih_l{k}", 0, rows)
        slice_fn(module, f"weight_hh_l{k}", 0, rows)
        slice_fn(module, f"weight_hh_l{k}", 1, index)
        if k > 0:
            slice_fn(module, f"weight_ih_l{k}", 1, index)
        if module.bias:
            slice_fn(module, f"bias_ih_l{k}", 0, rows)
            slice_fn(module, f"bias_hh_l{k}", 0, rows)
    module.hidden_size = len(index)


def hidden_scores(module: nn.Module, p: int) -> torch.Tensor:
    """Per unit: the norm of its rows in every gate block of every layer (input and recurrent weights)."""
    h = module.hidden_size
    total = torch.zeros(h)
    for k in range(module.num_layers):
        for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
            w = getattr(module, name).detach().float().reshape(gates(module), h, -1)
            total += w.abs().sum((0, 2)) if p == 1 else w.pow(2).sum((0, 2))
    return total if p == 1 else total.sqrt()


def _rnn_blocker(module: nn.Module) -> str | None:
    if module.bidirectional:
        return "is bidirectional (its two directions are not pruned yet)"
    if getattr(module, "proj_size", 0):
        return "has a projection (proj_size)"
    return None


class RecurrentRules:
    """Mixed into the channel walker (:class:`compress.passes.prune.groups._Walker`)."""

    def recurrent(self, node: fx.Node, module: nn.Module, inputs: list[fx.Node], label: str) -> None:
        path = str(node.target)
        why = _rnn_blocker(module)
        x = inputs[0] if inputs else None
        lay = self.layouts.get(x) if x is not None else None
        sid = self.new_space(module.hidden_size, path, f"{label} {why}" if why else None)
        if why:
            self.block(lay, f"{label} {why}")
        elif lay is not None and (lay.axis != 1 or lay.inner != 1):
            self.block(lay, f"{label} reads another axis than the channel axis")
        elif lay is not None:
            self.members.append(Member(path, "in", lay))
        self.members.append(Member(path, "hidden", Layout((sid,), 1)))
        out = Layout((sid,), 1)
        state = {0: out, 1: out} if isinstance(module, nn.LSTM) else out  # (h_n, c_n) or h_n: units last
        self.tuples[node] = {0: out, 1: state}
        if len(inputs) > 1:  # an initial state passed in: its units are not ours to cut
            self.block_all(inputs[1:], f"{label} takes an initial state")
            self.block(out, f"{label} takes an initial state")

    def index(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``t[i]`` of a tuple output, or a tensor indexed on axes other than the channel axis."""
        src, key = node.args[0], node.args[1]
        if isinstance(src, fx.Node) and src in self.tuples and isinstance(key, int):
            value = self.tuples[src].get(key)
            if isinstance(value, dict):
                self.tuples[node] = value
            elif value is not None:
                self.layouts[node] = value
            return True
        if not isinstance(src, fx.Node) or src not in self.layouts:
            return src not in self.layouts if isinstance(src, fx.Node) else True
        lay, shape = self.layouts[src], _shape(src)
        if lay.inner != 1 or shape is None:
            return False
        keys = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or isinstance(k, fx.Node) for k in keys):
            return False
        channel, axis, new_axis, out_rank = len(shape) - lay.axis, 0, None, 0
        for k in keys:
            if k is None:
                out_rank += 1
                continue
            if axis == channel:
                if not (isinstance(k, slice) and k == slice(None)):
                    return False  # indexes the channels themselves
                new_axis = out_rank
            if not isinstance(k, int):
                out_rank += 1
            axis += 1
        if new_axis is None:  # the channel axis is past the indexed ones: it stays, after the kept axes
            new_axis = out_rank + (channel - axis)
        out = _shape(node)
        if out is None:
            return False
        self.layouts[node] = Layout(lay.spaces, len(out) - new_axis)
        return True


__all__ = ["RecurrentRules", "hidden_rows", "hidden_scores", "slice_rnn"]
