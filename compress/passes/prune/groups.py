"""Channel dependency groups of a captured graph, built from the op registry's coupling declarations.

Every producer (a conv, linear or embedding owning its output channels) opens a *channel space*. Walking
the graph, each tensor carries its *layout*: the spaces that make up its channel axis, in order (one space,
or several after a concatenation), where that axis is, and how many contiguous columns each channel spans
(1, or H·W after a flatten). The coupling of each op (``compress.ops.lookup(node, modules).coupling``) says
what happens to a layout:

* PRODUCER: the input's spaces are consumed (the layer's input columns are sliced); a new space starts.
* DEPTHWISE (a conv with groups = in = out): input channel i is output channel i, the layout passes through.
* PASSTHROUGH: the layout passes through; BatchNorm / LayerNorm / PReLU parameters are sliced with it.
* ELEMENTWISE: all tensor inputs must prune the same channels: their spaces are unioned (residual adds, SE
  gates); a tensor pruning cannot slice (a constant, the model input) makes the union unprunable.
* CONCAT: along the channel axis the output layout is the inputs' layouts end to end (offsets).
* HEADS, BLOCKING, NONE and undeclared ops: every space reaching them is blocked, with the reason.

Two refinements read through ops the registry marks BLOCKING because in general they mix the channel axis:
a reshape of ``[N, C, *S]`` to ``[N, C·ΠS]`` (flatten before the classifier: channel c owns columns
c·ΠS … (c+1)·ΠS - 1 of the next linear) and reductions (mean, sum, amax) over axes other than the channel axis.

Spaces unioned into one *group* prune the same channel indices. A group is pruned only when no member is
blocked; a group that reaches the model output or a blocking op is reported with its reason, never sliced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compress.ops import Coupling, lookup, target_label
from compress.passes.prune.axes import AxisRules
from compress.passes.prune.layout import Layout, Member, ShapeEdit, Space, _arg, _shape, _tensor_inputs
from compress.passes.prune.recurrent import _RNN, RecurrentRules

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.PReLU)
_REDUCTIONS = ("mean", "sum", "amax")


@dataclass
class Group:
    """Channel spaces that must lose the same channel indices."""

    id: int
    size: int
    spaces: list[int]
    producers: list[str]
    blocked: list[str]
    unit: int = 1  # columns per channel of each producer: head_dim for a group of attention heads

    @property
    def key(self) -> str:
        """A stable name (the sorted producer paths): plans are matched to a fresh capture by it."""
        return "+".join(sorted(self.producers))


@dataclass
class ChannelGraph:
    """The result of :func:`analyze`: spaces, members (what to slice) and groups."""

    spaces: list[Space]
    members: list[Member]
    groups: list[Group]
    space_group: dict[int, int]
    edits: list[ShapeEdit] = field(default_factory=list)  # literal reshape sizes that count a group's units


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Walker(AxisRules, RecurrentRules):
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.spaces: list[Space] = []
        self.members: list[Member] = []
        self.layouts: dict[fx.Node, Layout] = {}
        self.edits: list[ShapeEdit] = []
        self.tuples: dict[fx.Node, dict] = {}  # tuple-valued nodes (an LSTM's (out, (h, c))): index -> layout

    # -- spaces --------------------------------------------------------------------------------------------
    def new_space(self, size: int, producer: str | None, blocked: str | None = None) -> int:
        sid = self.uf.add()
        self.spaces.append(Space(size, producer, [blocked] if blocked else []))
        return sid

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for s in layout.spaces:
                self.spaces[s].blocked.append(reason)

    def size(self, layout: Layout) -> int:
        return sum(self.spaces[s].size for s in layout.spaces)

    def layout_of(self, node: fx.Node, axis: int) -> Layout:
        """The node's layout, or a fixed (unprunable) space of its channel size at ``axis``."""
        if node in self.layouts:
            return self.layouts[node]
        shape = _shape(node)
        size = shape[-axis] if shape is not None and len(shape) >= axis else 1
        lay = Layout((self.new_space(size, None, f"{node.name} is a model input, a constant or the output of an op whose channels are not followed"),), axis)
        self.layouts[node] = lay
        return lay

    # -- the walk ------------------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                for inp in _tensor_inputs(node):
                    self.block(self.layouts.get(inp), "reaches the model output")
                fx.node.map_arg(node.args, lambda n: self._block_tuple(self.tuples.get(n)))
                continue
            self.visit(node)

    def visit(self, node: fx.Node) -> None:
        spec = lookup(node, self.modules)
        inputs = _tensor_inputs(node)
        label = f"{target_label(node, self.modules)} ({node.name})"
        if spec is None:
            return self.block_all(inputs, f"{label} has no op declaration")
        coupling = spec.coupling
        module = self.modules.get(node.target) if node.op == "call_module" else None
        if coupling is Coupling.PRODUCER and module is not None:
            return self.producer(node, module, inputs, label)
        if coupling is Coupling.DEPTHWISE and module is not None:
            return self.depthwise(node, module, inputs, label)
        if coupling is Coupling.PASSTHROUGH:
            return self.passthrough(node, module, inputs, label)
        if coupling is Coupling.ELEMENTWISE:
            return self.elementwise(node, inputs, label)
        if coupling is Coupling.CONCAT:
            return self.concat(node, inputs, label)
        if coupling is Coupling.BLOCKING and spec.name == "reshape" and (
                self.flatten(node, inputs) or self.split_units(node, inputs) or self.merge_units(node, inputs)
                or self.unit_dims(node, inputs) or self.merge_next(node, inputs)):
            return None
        if coupling is Coupling.BROADCAST and self.broadcast(node, inputs):
            return None
        if coupling is Coupling.PERMUTE and self.permute(node, inputs):
            return None
        if coupling is Coupling.MATMUL and self.matmul(node, inputs, label):
            return None
        if coupling is Coupling.ALONG_AXIS and self.along_axis(node, inputs):
            return None
        if coupling is Coupling.INDEX and self.index(node, inputs):
            return None
        if coupling is Coupling.BLOCKING and spec.name in _REDUCTIONS and self.reduction(node, inputs):
            return None
        if coupling is Coupling.NONE and spec.name == "shape":
            return None  # reads sizes only
        why = {Coupling.HEADS: "(nn.MultiheadAttention) keeps its heads: only attention written with "
                               "reshapes and matmuls has its heads pruned",
               Coupling.BLOCKING: "mixes or reshapes the channel axis",
               Coupling.PERMUTE: "moves the channel axis in a way the analysis does not follow",
               Coupling.MATMUL: "contracts or mixes the channel axis",
               Coupling.ALONG_AXIS: "computes along the channel axis",
               Coupling.INDEX: "indexes the channel axis",
               Coupling.BROADCAST: "expands the channel axis"}.get(coupling, "has no channel rule")
        return self.block_all(inputs, f"{label} {why}")

    def _block_tuple(self, value) -> None:
        for v in (value or {}).values():
            self._block_tuple(v) if isinstance(v, dict) else self.block(v, "reaches the model output")

    def block_all(self, inputs: list[fx.Node], reason: str) -> None:
        for inp in inputs:
            self.block(self.layouts.get(inp), reason)

    def out_layout(self, node: fx.Node, sid: int, axis: int) -> None:
        self.layouts[node] = Layout((sid,), axis)

    def producer(self, node: fx.Node, module: nn.Module, inputs: list[fx.Node], label: str) -> None:
        path = str(node.target)
        out_shape = _shape(node)
        if isinstance(module, _CONV + _CONV_T) and module.groups > 1:
            if isinstance(module, _CONV) and module.groups == module.in_channels == module.out_channels:
                return self.depthwise(node, module, inputs, label)
            self.block_all(inputs, f"{label} is a grouped convolution")
            sid = self.new_space(module.out_channels, path, f"{label} is a grouped convolution")
            return self.out_layout(node, sid, len(out_shape) - 1)
        if isinstance(module, _CONV + _CONV_T):
            x = inputs[0]
            lay = self.layouts.get(x)
            rank = len(_shape(x))
            if lay is not None and (lay.axis != rank - 1 or lay.inner != 1):
                self.block(lay, f"{label} reads another axis than the channel axis")
            elif lay is not None:
                self.members.append(Member(path, "in", lay))
            sid = self.new_space(module.out_channels, path)
            self.members.append(Member(path, "out", Layout((sid,), len(out_shape) - 1)))
            return self.out_layout(node, sid, len(out_shape) - 1)
        if isinstance(module, nn.Linear):
            lay = self.layouts.get(inputs[0])
            if lay is not None and lay.axis != 1:
                self.block(lay, f"{label} reads another axis than the channel axis")
            elif lay is not None:
                self.members.append(Member(path, "in", lay))
            sid = self.new_space(module.out_features, path)
            self.members.append(Member(path, "out", Layout((sid,), 1)))
            return self.out_layout(node, sid, 1)
        if isinstance(module, nn.Embedding):
            sid = self.new_space(module.embedding_dim, path)
            self.members.append(Member(path, "out", Layout((sid,), 1)))
            return self.out_layout(node, sid, 1)
        if isinstance(module, _RNN):
            return self.recurrent(node, module, inputs, label)
        return self.block_all(inputs, f"{label} has no channel rule for its module type")

    def depthwise(self, node: fx.Node, module: nn.Module, inputs: list[fx.Node], label: str) -> None:
        rank = len(_shape(inputs[0]))
        lay = self.layout_of(inputs[0], rank - 1)
        if lay.axis != rank - 1 or lay.inner != 1:
            self.block(lay, f"{label} reads another axis than the channel axis")
            return
        self.members.append(Member(str(node.target), "dw", lay))
        self.layouts[node] = lay

    def _channel_kept(self, node: fx.Node, lay: Layout) -> bool:
        shape = _shape(node)
        return shape is not None and len(shape) >= lay.axis and shape[-lay.axis] == self.size(lay) * lay.inner

    def passthrough(self, node: fx.Node, module: nn.Module | None, inputs: list[fx.Node], label: str) -> None:
        if not inputs:
            return None
        lay = self.layouts.get(inputs[0])
        if lay is None:
            return self.block_all(inputs[1:], f"{label} combines unprunable tensors")
        if len(inputs) > 1 or not self._channel_kept(node, lay):
            # extra tensor operands (a functional norm's weight) or a changed channel size: cannot follow
            return self.block_all(inputs, f"{label} changes or re-weights the channel axis")
        if isinstance(module, _NORM):
            if lay.inner != 1 or (isinstance(module, nn.LayerNorm) and (lay.axis != 1 or
                                                                        len(module.normalized_shape) != 1)):
                return self.block(lay, f"{label} normalizes over more than the channel axis")
            if not (isinstance(module, nn.PReLU) and module.num_parameters == 1):  # one shared slope: nothing to slice
                self.members.append(Member(str(node.target), "norm", lay))
        self.layouts[node] = lay

    def elementwise(self, node: fx.Node, inputs: list[fx.Node], label: str) -> None:
        out_shape = _shape(node)
        known = [self.layouts[i] for i in inputs if i in self.layouts]
        if not known or out_shape is None:
            return None
        ref = known[0]
        lays = []
        for inp in inputs:
            shape = _shape(inp)
            if inp in self.layouts:
                lays.append(self.layouts[inp])
            elif len(shape) >= ref.axis and shape[-ref.axis] != 1:
                lays.append(self.layout_of(inp, ref.axis))  # a fixed space: blocks the union below
            # else: broadcast along the channel axis (a per-sample scalar), no coupling
        for lay in lays:
            same = (lay.axis == ref.axis and lay.inner == ref.inner and len(lay.spaces) == len(ref.spaces)
                    and all(self.spaces[a].size == self.spaces[b].size for a, b in zip(lay.spaces, ref.spaces, strict=False)))
            if not same:
                for other in lays:
                    self.block(other, f"{label} combines tensors whose channels are laid out differently")
                return None
        for lay in lays:  # every one: the first input may be a fixed tensor (x + f(x) on the model input)
            for a, b in zip(lay.spaces, ref.spaces, strict=True):
                self.uf.union(a, b)
        if len(out_shape) >= ref.axis and out_shape[-ref.axis] == self.size(ref) * ref.inner:
            self.layouts[node] = ref
        else:
            self.block_all(inputs, f"{label} broadcasts the channel axis")

    def concat(self, node: fx.Node, inputs: list[fx.Node], label: str) -> None:
        out_shape = _shape(node)
        dim = _arg(node, 1, "dim", 0)
        axis = len(out_shape) - (dim % len(out_shape))
        if not any(i in self.layouts for i in inputs):
            return None
        lays = [self.layout_of(i, axis) for i in inputs]
        if any(lay.axis != axis or lay.inner != 1 for lay in lays):
            # concatenation along another axis: every input keeps its channels, all must agree
            return self.elementwise(node, inputs, label)
        self.layouts[node] = Layout(tuple(s for lay in lays for s in lay.spaces), axis)

    def flatten(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """[N, C, *S] → [N, C·ΠS] with the channel axis at 1: the next linear's columns come in blocks."""
        if len(inputs) != 1 or inputs[0] not in self.layouts:
            return False
        lay, shape, out = self.layouts[inputs[0]], _shape(inputs[0]), _shape(node)
        if out is None or len(shape) < 2 or lay.axis != len(shape) - 1 or len(out) != 2 or out[0] != shape[0]:
            return False
        if out[1] != math.prod(shape[1:]):
            return False
        self.layouts[node] = Layout(lay.spaces, 1, lay.inner * math.prod(shape[2:]))
        return True

    def reduction(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """A reduction over axes other than the channel axis keeps the channels (global pooling by hand)."""
        if not inputs or inputs[0] not in self.layouts:
            return False
        lay, shape, out = self.layouts[inputs[0]], _shape(inputs[0]), _shape(node)
        dims = _arg(node, 1, "dim")
        if dims is None or out is None or lay.inner != 1:
            return False
        dims = {d % len(shape) for d in ([dims] if isinstance(dims, int) else dims)}
        channel = len(shape) - lay.axis
        if channel in dims:
            return False
        new_axis = channel if len(out) == len(shape) else channel - sum(d < channel for d in dims)
        self.layouts[node] = Layout(lay.spaces, len(out) - new_axis)
        return True


def _shared_weights(w: _Walker) -> None:
    """Modules holding the same Parameter (a layer called twice, tied weights) cannot be sliced apart."""
    owners: dict[int, list[str]] = {}
    for path, m in w.modules.items():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append(path)
    shared = {p for paths in owners.values() if len(paths) > 1 for p in paths}
    for member in w.members:
        if member.module in shared:
            w.block(member.layout, f"{member.module} shares its weights with another module")


def analyze(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> ChannelGraph:
    """Channel spaces, sliceable members and dependency groups of the captured graph ``gm``.

    Example:
        >>> from torch import nn
        >>> from compress.capture import capture
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> g = analyze(capture(net.eval(), (torch.randn(2, 3, 8, 8),)), (torch.randn(2, 3, 8, 8),))
        >>> [(grp.key, grp.size, bool(grp.blocked)) for grp in g.groups]
        [('0', 8, False), ('3', 4, True)]
    """
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    w = _Walker(gm)
    w.run()
    _shared_weights(w)
    roots: dict[int, Group] = {}
    space_group: dict[int, int] = {}
    for sid, space in enumerate(w.spaces):
        root = w.uf.find(sid)
        if root not in roots:
            roots[root] = Group(len(roots), space.size, [], [], [])
        grp = roots[root]
        grp.spaces.append(sid)
        if space.producer is not None:
            grp.producers.append(space.producer)
        grp.blocked.extend(r for r in space.blocked if r not in grp.blocked)
        grp.unit = max(grp.unit, space.unit)
        space_group[sid] = grp.id
    # Groups of fixed spaces only (the model input, constants) are not prunable and not worth reporting.
    groups = [g for g in roots.values() if g.producers]
    for new_id, g in enumerate(groups):
        for sid in g.spaces:
            space_group[sid] = new_id
        g.id = new_id
    space_group = {s: gid for s, gid in space_group.items() if any(s in g.spaces for g in groups)}
    return ChannelGraph(w.spaces, w.members, groups, space_group, w.edits)


__all__ = ["ChannelGraph", "Group", "Layout", "Member", "ShapeEdit", "analyze"]
