"""describe(): what a prepared model does with each op, in rows ``compress inspect`` prints and tests compare.

The rows are read off the prepared graph itself (the op registry's verdict for each node, the quant layers the
pass swapped in), so what ``inspect`` says is what ``prepare`` did, by construction.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from compress.passes import prepare
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Mish(), nn.Flatten(), nn.Linear(4 * 36, 2))
    >>> rows = describe(prepare(net, torch.zeros(1, 1, 8, 8)))
    >>> [(r.module, r.label, r.verdict) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
    [('0', 'QuantConv2d', 'QuantConv2d'), ('1', 'mish', 'stays float (float in onnx/tflite)'),
     ('2', 'reshape', 'int8 passthrough'), ('3', 'QuantLinear', 'QuantLinear')]
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from compress import ops
from compress.layers.base import QuantLayerMixin
from compress.ops import Policy
from compress.ops.coverage import module_path, source_line
from compress.ops.verdict import verdict


@dataclass(frozen=True)
class OpRow:
    """One op of the prepared graph: its node, the user's module it sits in, and what quantization did."""

    node: str
    module: str  # the user's module path ("" for the top module's own forward)
    label: str  # the quant layer class, or the op's registry name
    verdict: str  # ops.verdict.verdict(): "QuantConv2d", "int8 output", "stays float (...)", ...
    source: str  # "nets.py:41 (x = ...)" when capture recorded it


def describe(prepared: nn.Module, formats: tuple[str, ...] = ops.FORMATS) -> list[OpRow]:
    """Rows for every op of ``prepared`` (a ``prepare()`` result), quantizer nodes left out.

    Args:
        prepared: the GraphModule :func:`~compress.passes.prepare` returned.
        formats: the export formats the verdicts are about.

    Returns:
        One :class:`OpRow` per op node, in graph order; [] for a module-swap fallback (no graph).
    """
    if not isinstance(prepared, fx.GraphModule):
        return []
    modules = dict(prepared.named_modules())
    # Ops prepare decided to keep float beyond the registry's verdict (keep_float, attention masks, layer
    # modes): their row says so, with the first clause of prepare's reason.
    kept = {f.name: ("keep_float" if "keep_float" in f.reason else f.reason.split(":")[0])
            for f in getattr(getattr(prepared, "compress_info", None), "float_ops", ())}
    rows = []
    for node in prepared.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        spec = ops.lookup(node, modules)
        if spec is not None and spec.policy is Policy.QUANTIZER:
            continue
        mod = modules.get(node.target) if node.op == "call_module" else None
        quant_class = type(mod) if isinstance(mod, QuantLayerMixin) else None
        text = verdict(spec, formats, quant_class)
        if node.name in kept and (kept[node.name] == "keep_float" or "float" not in text):
            text = f"stays float ({kept[node.name]})"
        label = type(mod).__name__ if mod is not None else (spec.name if spec else ops.target_label(node, modules))
        where = node.target if mod is not None else module_path(node)
        rows.append(OpRow(node.name, str(where), label, text, source_line(node)))
    return rows
