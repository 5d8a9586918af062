"""Additive attention masks stay float: ``scores + mask`` before a softmax must not set the scores' int8 range.

BERT-style code turns the padding mask into an additive one — ``(1 - mask) * -10000`` (pre-v4 Hugging Face),
``torch.finfo(dtype).min`` (today's), ``masked_fill(..., -inf)`` — and adds it to the attention scores before
the softmax. Quantized like any add, the sum's calibrated range spans [-10000, max score]: its int8 step is
~40, every real score rounds to 0 and the attention is uniform (the zoo BERT: top-1 agreement with fp32
0.45, logit cosine 0.02). The mask is a boolean: here it stays float from the model input (or constant) to the
softmax, so the scores keep the grid of the op before the add, the add and the softmax's input compute in
float (both runtimes run the softmax in float between DEQUANTIZE and QUANTIZE anyway) and a masked position
gets exactly ``-10000`` / ``finfo.min`` / ``-inf``, as in the float model.

A mask add is recognised by structure, not by calibration values (an example batch often has no padding):
an ``add`` whose value reaches a softmax through quantizers / preserving ops (dropout, reshape) and whose
other operand is computed from model inputs or buffers without any weight or matmul, through an op with a
huge negative constant (≤ ``HUGE_NEGATIVE``) or from a graph input directly (an ``attention_mask`` passed
already additive).

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Attn(nn.Module):
    ...     def forward(self, scores, keep):
    ...         return torch.softmax(scores + (1.0 - keep) * -10000.0, dim=-1)
    >>> from compress.passes import prepare
    >>> p = prepare(Attn(), (torch.randn(1, 4, 4), torch.ones(1, 4, 4)))
    >>> sorted(f.name for f in p.compress_info.float_ops if "attention mask" in f.reason)
    ['add', 'mul', 'rsub']
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn

from compress.passes import graph as g

#: A constant at or below this in the mask's computation marks it as an additive mask (attention scores,
#: even unscaled, stay orders of magnitude smaller).
HUGE_NEGATIVE = -1e3
_ADDS = {operator.add, torch.add, operator.iadd}


def _spec_name(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    spec = g.spec_of(node, modules)
    return spec.name if spec is not None else None


def _through_quantizers(node, modules: dict[str, nn.Module]):
    while isinstance(node, fx.Node) and g.is_quantizer(node, modules):
        node = node.args[0]
    return node


def _mask_ancestry(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[set[fx.Node], bool, bool] | None:
    """(the nodes ``node`` is computed from, whether a huge negative constant takes part, whether a model
    input does), or None when a weight, a parameter or a matmul takes part (a learned bias, the scores)."""
    seen: set[fx.Node] = set()
    pending = [node]
    huge = from_input = False
    while pending:
        n = pending.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            from_input = True
            continue
        if n.op == "get_attr":
            value = gm_attr(n)
            if isinstance(value, nn.Parameter) or not isinstance(value, torch.Tensor):
                return None
            huge |= bool(value.numel()) and bool(value.min() <= HUGE_NEGATIVE)
            continue
        if n.op == "call_module" and not g.is_quantizer(n, modules):
            mod = modules.get(n.target)
            if mod is None or any(True for _ in mod.parameters()):
                return None
        if _spec_name(n, modules) in ("matmul", "linear", "bmm", "conv2d", "conv1d", "embedding"):
            return None
        for a in [*n.args, *n.kwargs.values()]:
            if isinstance(a, int | float) and not isinstance(a, bool) and (a <= HUGE_NEGATIVE or math.isnan(a)):
                huge = True
        pending.extend(n.all_input_nodes)
    return seen, huge, from_input


def gm_attr(node: fx.Node):
    """The value a ``get_attr`` node reads."""
    value = node.graph.owning_module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def find_mask_adds(gm: fx.GraphModule) -> tuple[list[fx.Node], set[fx.Node]]:
    """(every add of an additive mask before a softmax, the nodes that compute only such masks)."""
    modules = dict(gm.named_modules())
    adds: list[fx.Node] = []
    ancestry: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if _spec_name(node, modules) != "softmax" or not node.args:
            continue
        add = _through_quantizers(node.args[0], modules)
        while isinstance(add, fx.Node) and g.is_preserving(add, modules) and add.args:
            add = _through_quantizers(add.args[0], modules)
        if not isinstance(add, fx.Node) or add.op != "call_function" or add.target not in _ADDS or add in adds:
            continue
        sides = [_mask_ancestry(o, modules) if isinstance(o, fx.Node) else None
                 for o in (_through_quantizers(a, modules) for a in add.args[:2])]
        if len(sides) != 2:
            continue
        # The mask: the side with a huge negative constant; else the only weight-free side fed by an input
        # (an additive mask passed in); two weight-free inputs added are not told apart.
        huge = [s for s in sides if s is not None and s[1]]
        plain = [s for s in sides if s is not None and s[2]]
        mask = huge[0] if len(huge) == 1 else (plain[0] if not huge and len(plain) == 1 and None in sides else None)
        if mask is not None:
            adds.append(add)
            ancestry |= mask[0]
    return adds, _only_feeding(ancestry, set(adds), modules)


def _only_feeding(nodes: set[fx.Node], adds: set[fx.Node], modules: dict[str, nn.Module]) -> set[fx.Node]:
    """The nodes of ``nodes`` whose every use ends in a mask add (one mask is often shared by all layers)."""
    own: set[fx.Node] = set()

    def ends_in_mask(user: fx.Node) -> bool:
        if user in adds or user in own:
            return True
        return g.is_quantizer(user, modules) and bool(user.users) and all(ends_in_mask(u) for u in user.users)

    changed = True
    while changed:
        changed = False
        for n in nodes - own:
            if n.users and all(ends_in_mask(u) for u in n.users):
                own.add(n)
                changed = True
    return own


def carry_masks_in_float(gm: fx.GraphModule) -> list:
    """Remove the quantizers on every additive attention mask and on its add (see the module docstring).

    Returns the :class:`~compress.passes.prepare.FloatOp` entries for the report: each mask add and each op
    that computes only masks, with the reason.
    """
    from compress.passes.prepare import FloatOp

    modules = dict(gm.named_modules())
    adds, mask_nodes = find_mask_adds(gm)
    float_ops = []
    for node in [n for n in gm.graph.nodes if n in mask_nodes or n in adds]:
        dropped = False
        for user in list(node.users):
            if g.is_quantizer(user, modules):
                user.replace_all_uses_with(node)
                gm.graph.erase_node(user)
                dropped = True
        # Listed: the adds, and the mask ops that would have been int8 (not the casts and reshapes on the way).
        if node in adds or (dropped and node.op != "placeholder"):
            what = "adds an attention mask" if node in adds else "computes an additive attention mask"
            float_ops.append(FloatOp(node.name, g.node_label(node, modules),
                                     f"{what}: kept in float so the mask's huge negative values do not set the "
                                     "attention scores' int8 range"))
    if adds:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return float_ops
