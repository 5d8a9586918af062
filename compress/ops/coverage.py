"""Coverage of a captured graph against the registry, per export format, checked before any long work.

Example:
    >>> import torch
    >>> from torch import fx, nn
    >>> class Net(nn.Module):
    ...     def forward(self, x):
    ...         return torch.special.i0(torch.relu(x))  # no compress op for i0 (capture keeps aten's)
    >>> gm = fx.symbolic_trace(Net())
    >>> [(g.label, g.fmt) for g in coverage_gaps(gm, ("onnx", "tflite"))]
    [('special_i0', 'onnx'), ('special_i0', 'tflite')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import fx

from compress.errors import ExportError
from compress.ops.spec import Kernel, lookup, target_label

_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)')
_LIBRARY_PARTS = ("/torch/", "/site-packages/torch", "/compress/", "<eval_with_key>")


@dataclass(frozen=True)
class Gap:
    """An op ``fmt``'s exporter cannot write: node name, what it calls, where the user's code does it."""

    node: str
    label: str
    fmt: str
    source: str  # "nets.py:41 (x = torch.special.bessel_j0(x))" or ""
    module: str  # the module path it sits in ("encoder.layer.0.attention") or ""


def source_line(node: fx.Node) -> str:
    """``file:line (code)`` of the innermost user frame in the node's ``stack_trace`` (torch.export records it)."""
    trace = node.meta.get("stack_trace") or ""
    frames = [m for m in _USER_FRAME.finditer(trace) if not any(p in m.group(1) for p in _LIBRARY_PARTS)]
    if not frames:
        return ""
    path, line, _fn, code = frames[-1].groups()
    return f"{path.rsplit('/', 1)[-1]}:{line} ({code.strip()})"


def module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def coverage_gaps(gm: fx.GraphModule, formats: tuple[str, ...]) -> list[Gap]:
    """Every (node, format) whose op has no mapping in that format (``Kernel.NONE`` or no spec at all)."""
    modules = dict(gm.named_modules())
    gaps = []
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        spec = lookup(node, modules)
        for fmt in formats:
            if spec is None or spec.kernel(fmt) is Kernel.NONE:
                gaps.append(Gap(node.name, target_label(node, modules), fmt, source_line(node), module_path(node)))
    return gaps


def check_coverage(gm: fx.GraphModule, formats: tuple[str, ...]) -> None:
    """Raise one line naming the first unmapped op, its source line and what to do; no-op when covered.

    Raises:
        ExportError: an op of ``gm`` that a requested format cannot write.
    """
    gaps = coverage_gaps(gm, formats)
    if not gaps:
        return
    first = gaps[0]
    where = f" at {first.source}" if first.source else ""
    inside = f" in {first.module}" if first.module else ""
    others = sorted({g.label for g in gaps} - {first.label})
    more = f" (also unmapped: {', '.join(others)})" if others else ""
    other_formats = [f for f in formats if f != first.fmt and not any(g.fmt == f for g in gaps)]
    alt = f"use --format {','.join(other_formats)} (which covers it), " if other_formats else ""
    raise ExportError(
        f"{first.label}{where}{inside} has no {first.fmt} mapping{more}; {alt}replace the op in the model, "
        "or keep it outside the exported model (`compress inspect MODEL --input-shape ...` lists every op and "
        "its mapping)"
    )
