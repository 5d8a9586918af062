"""Channel rules for ops that move, split or batch over axes: what makes attention heads prunable.

Multi-head attention written the usual way (``view(q, [n, t, heads, head_dim]).permute(0, 2, 1, 3)``, scores
``q @ k.transpose(-1, -2)``, softmax over the keys, ``probs @ v``, then back to ``[n, t, heads·head_dim]``)
prunes whole heads when channels are followed through these rules:

* a reshape that splits a producer's fresh channel axis ``C`` into ``[H, D]`` turns its space into H *units*
  of D contiguous columns (the producer's rows, and any literal ``H`` in the target shape, are edited);
* PERMUTE moves the channel axis with the permutation;
* MATMUL couples its operands' channel axis when it is a batch axis of both (the head axis of q and k, then
  of the probabilities and v), as an add would; a contracted channel axis is blocked;
* ALONG_AXIS (softmax) passes the layout through unless it normalises along the channel axis;
* a reshape that merges the channel axis with all the axes after it (``[n, t, H, D] → [n, t, H·D]``) gives
  the next layer's input columns in blocks of D, like a flatten before a classifier.

Grouped-query attention repeats each of G kv heads H/G times (``k[:, :, None].expand(..).reshape(..)``:
BROADCAST, then a reshape merging the channel axis with the next); when matmul meets q's H heads with such
a k, q's space is refined into G units of H/G heads, so a kv head and its q heads are removed together.

Each rule returns False when the pattern does not match; the caller then blocks the spaces with a reason.
"""

from __future__ import annotations

import math

from torch import fx

from compress.passes.prune.layout import Layout, Member, ShapeEdit, _arg, _shape


def _shape_arg(node: fx.Node) -> tuple[int, int | None, list] | None:
    """(arg index, position or None, the sizes) of a reshape/view target shape, or None (flatten etc.)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if "flatten" in name:
        return None  # start/end dims, no sizes
    if len(node.args) == 2 and isinstance(node.args[1], int):
        return 1, None, [node.args[1]]
    if len(node.args) == 2 and isinstance(node.args[1], list | tuple):
        return 1, 0, list(node.args[1])
    if len(node.args) > 2 and all(isinstance(a, int | fx.Node) for a in node.args[1:]):
        return 1, None, list(node.args[1:])
    return None


class AxisRules:
    """Mixed into the channel walker (:class:`compress.passes.prune.groups._Walker`)."""

    def edit_literal(self, node: fx.Node, at: int, expected: int, sid: int, unit: int, *,
                     required: bool = True) -> bool:
        """Record that size ``at`` of ``node``'s target shape counts units of space ``sid`` (when it is the
        literal ``expected``); -1 (inferred) needs no edit. False when the size cannot follow a cut: it is
        computed elsewhere in the graph, or there is no target shape and ``required``."""
        target = _shape_arg(node)
        if target is None:
            return not required
        arg, pos, sizes = target
        if not 0 <= at < len(sizes):
            return False
        literal = sizes[at]
        if isinstance(literal, int) and literal == expected:
            self.edits.append(ShapeEdit(node.name, arg if pos is not None else arg + at,
                                        at if pos is not None else None, sid, unit))
            return True
        return literal == -1

    def permute(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        lay = self.layouts.get(inputs[0]) if inputs else None
        if lay is None:
            return True
        rank = len(_shape(inputs[0]))
        channel = rank - lay.axis
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name == "permute":
            dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], list | tuple) else node.args[1:]
            order = [int(d) % rank for d in dims]
            new = order.index(channel)
        elif name == "transpose":
            a, b = (int(d) % rank for d in node.args[1:3])
            new = b if channel == a else a if channel == b else channel
        elif name in ("t", "numpy_T") and rank == 2:
            new = 1 - channel
        else:
            return False
        self.layouts[node] = Layout(lay.spaces, rank - new, lay.inner)  # blocks of a unit stay on their axis
        return True

    def matmul(self, node: fx.Node, inputs: list[fx.Node], label: str) -> bool:
        if len(node.args) < 2 or not all(isinstance(a, fx.Node) for a in node.args[:2]):
            return False
        a, b = node.args[:2]
        known = [(x, self.layouts[x]) for x in (a, b) if x in self.layouts]
        if not known:
            return True
        for x, lay in known:
            rank = len(_shape(x))
            if lay.axis <= 2 or lay.axis > rank:  # a row / contracted axis, not a batch axis
                return False
        if len(known) == 2:
            self.refine_to(known[0][1], known[1][1])
            self.refine_to(known[1][1], known[0][1])
            known = [(x, self.layouts[x]) for x in (a, b)]
        ref = known[0][1]
        lays = []
        for x in (a, b):
            shape = _shape(x)
            if x in self.layouts:
                lays.append(self.layouts[x])
            elif len(shape) >= ref.axis and shape[-ref.axis] != 1:
                lays.append(self.layout_of(x, ref.axis))  # a fixed operand: the union below is blocked
        for lay in lays:  # every one: a fixed first operand must join (and block) the union too
            if lay.axis != ref.axis or lay.inner != ref.inner or len(lay.spaces) != len(ref.spaces) or \
                    any(self.spaces[p].size != self.spaces[q].size for p, q in zip(lay.spaces, ref.spaces, strict=True)):
                return False
            for p, q in zip(lay.spaces, ref.spaces, strict=True):
                self.uf.union(p, q)
        self.layouts[node] = Layout(ref.spaces, ref.axis, ref.inner)
        return True

    def refine_to(self, fine: Layout, coarse: Layout) -> None:
        """Grouped-query attention: q's H heads meet k's G shared heads repeated H/G times. q's own, uncoupled
        space becomes G units of H/G heads (inner × H/G everywhere it is recorded), so a kv head and the q
        heads that read it go together."""
        if len(fine.spaces) != 1 or len(coarse.spaces) != 1 or fine.inner != 1 or coarse.inner == 1:
            return
        sid, rep = fine.spaces[0], coarse.inner
        space = self.spaces[sid]
        if space.size != self.spaces[coarse.spaces[0]].size * rep or space.producer is None or \
                any(self.uf.find(t) == self.uf.find(sid) for t in range(len(self.spaces)) if t != sid):
            return
        space.size, space.unit = space.size // rep, space.unit * rep
        self.members = [Member(m.module, m.role, Layout(m.layout.spaces, m.layout.axis, m.layout.inner * rep))
                        if m.layout.spaces == (sid,) else m for m in self.members]
        self.layouts = {n: Layout(lay.spaces, lay.axis, lay.inner * rep) if lay.spaces == (sid,) else lay
                        for n, lay in self.layouts.items()}
        self.edits = [ShapeEdit(e.node, e.arg, e.pos, e.space, e.unit * rep) if e.space == sid else e
                      for e in self.edits]

    def broadcast(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``expand`` of size-1 axes other than the channel axis; a literal channel size in it is edited."""
        lay = self.layouts.get(inputs[0]) if inputs else None
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if lay is None:
            return True
        shape, out = _shape(inputs[0]), _shape(node)
        channel = len(shape) - lay.axis
        if name != "expand" or out is None or len(out) != len(shape) or out[channel] != shape[channel] or \
                not self.edit_literal(node, channel, shape[channel] if len(lay.spaces) == 1 else None,
                                      lay.spaces[0], lay.inner):
            return False
        self.layouts[node] = lay
        return True

    def unit_dims(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``unsqueeze`` / ``squeeze``: size-1 axes come or go; the channel axis keeps its place among the rest."""
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if name not in ("unsqueeze", "squeeze") or len(inputs) != 1 or inputs[0] not in self.layouts:
            return False
        lay, shape, out = self.layouts[inputs[0]], _shape(inputs[0]), _shape(node)
        channel = len(shape) - lay.axis
        if out is None or [d for d in shape if d != 1] != [d for d in out if d != 1] or shape[channel] == 1:
            return False
        rank_among = sum(1 for d in shape[:channel] if d != 1)
        seen = -1
        for i, d in enumerate(out):
            seen += d != 1
            if d != 1 and seen == rank_among:
                self.layouts[node] = Layout(lay.spaces, len(out) - i, lay.inner)
                return True
        return False

    def merge_next(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``[.., G, r, ..] → [.., G·r, ..]`` with G the channel axis (repeat_kv): units of r on the merged axis."""
        if len(inputs) != 1 or inputs[0] not in self.layouts:
            return False
        lay, shape, out = self.layouts[inputs[0]], _shape(inputs[0]), _shape(node)
        channel = len(shape) - lay.axis
        if out is None or lay.inner != 1 or len(out) != len(shape) - 1 or channel + 1 >= len(shape) or \
                list(out[:channel]) != list(shape[:channel]) or out[channel] != shape[channel] * shape[channel + 1] \
                or list(out[channel + 1:]) != list(shape[channel + 2:]) or shape[channel + 1] == 1:
            return False
        rep = shape[channel + 1]
        if not self.edit_literal(node, channel, out[channel] if len(lay.spaces) == 1 else None, lay.spaces[0], rep):
            return False
        self.layouts[node] = Layout(lay.spaces, len(out) - channel, rep)
        return True

    def along_axis(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        lay = self.layouts.get(inputs[0]) if inputs else None
        if lay is None:
            return True
        module = self.modules.get(node.target) if node.op == "call_module" else None
        dim = getattr(module, "dim", None) if module is not None else _arg(node, 1, "dim")
        rank = len(_shape(inputs[0]))
        if not isinstance(dim, int) or dim % rank == rank - lay.axis:
            return False
        self.layouts[node] = lay
        return True

    def split_units(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``[..., C] → [..., H, D]`` on a producer's own, not yet coupled space: H units of D columns."""
        if len(inputs) != 1 or inputs[0] not in self.layouts:
            return False
        x, lay = inputs[0], self.layouts[inputs[0]]
        shape, out = _shape(x), _shape(node)
        if out is None or lay.axis != 1 or lay.inner != 1 or len(lay.spaces) != 1 or len(out) != len(shape) + 1:
            return False
        sid = lay.spaces[0]
        heads, dim = out[-2], out[-1]
        if list(out[:-2]) != list(shape[:-1]) or heads * dim != shape[-1] or heads < 2 or dim < 2:
            return False
        space = self.spaces[sid]
        owners = [m for m in self.members if sid in m.layout.spaces]
        coupled = any(self.uf.find(t) == self.uf.find(sid) for t in range(len(self.spaces)) if t != sid)
        if space.producer is None or len(x.users) != 1 or coupled or \
                [m.role for m in owners] != ["out"] or space.unit != 1:
            return False
        if not self.edit_literal(node, len(out) - 2, heads, sid, 1):
            return False  # the head count comes from elsewhere in the graph: it would not follow the cut
        space.size, space.unit = heads, dim
        self.members = [Member(m.module, m.role, Layout(m.layout.spaces, m.layout.axis, dim))
                        if sid in m.layout.spaces else m for m in self.members]
        self.layouts[node] = Layout((sid,), 2)
        return True

    def merge_units(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """``[..., H, *S] → [..., H·ΠS]`` with H the channel axis: the next layer reads H blocks of ΠS columns."""
        if len(inputs) != 1 or inputs[0] not in self.layouts:
            return False
        x, lay = inputs[0], self.layouts[inputs[0]]
        shape, out = _shape(x), _shape(node)
        channel = len(shape) - lay.axis
        if out is None or lay.axis < 2 or len(out) != channel + 1 or \
                list(out[:channel]) != list(shape[:channel]) or out[-1] != math.prod(shape[channel:]):
            return False
        inner = lay.inner * math.prod(shape[channel + 1:])  # a unit's heads, each head's columns
        if not self.edit_literal(node, len(out) - 1, out[-1] if len(lay.spaces) == 1 else None, lay.spaces[0],
                                 inner, required=False):
            return False
        self.layouts[node] = Layout(lay.spaces, 1, inner)
        return True


__all__ = ["AxisRules"]
