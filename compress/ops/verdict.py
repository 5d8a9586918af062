"""What quantization does with an op, in words: one function that ``compress inspect`` and reports share.

Example:
    >>> from torch import nn
    >>> verdict_for_module(nn.Conv2d(1, 2, 3)), verdict_for_module(nn.MaxPool2d(2))
    ('QuantConv2d', 'int8 passthrough')
    >>> verdict_for_module(nn.Mish())
    'stays float (float in onnx/tflite)'
    >>> verdict_for_module(nn.Tanh())
    'float in onnx'
"""

from __future__ import annotations

from torch import nn

from compress.ops.spec import FORMATS, Kernel, OpSpec, Policy, module_spec


def verdict(spec: OpSpec | None, formats: tuple[str, ...] = FORMATS, quant_class: type | None = None) -> str:
    """``"QuantConv2d"``, ``"folded into conv"``, ``"int8 output"``, ``"int8 passthrough"``, ``"int8 (fused
    clamp)"``, ``"shape/index op"``, or which formats run it in float / cannot write it (``"stays float"`` when
    every format runs it in float)."""
    if spec is None:
        return "stays float (not in the op registry)"
    if spec.policy is Policy.WEIGHTED:
        if quant_class is None:
            return "stays float"
        floats = [f for f in formats if spec.kernel(f) is not Kernel.INT8]
        # int8 weights either way (a quarter of the bytes); some runtimes have no int8 kernel for the op itself
        return quant_class.__name__ + (f" (int8 weights, float in {'/'.join(floats)})" if floats else "")
    if spec.policy is Policy.FOLDED:
        return "folded into conv"
    if spec.policy is Policy.SHAPE:
        return "shape/index op"
    kinds = {f: spec.kernel(f) for f in formats}
    if all(k is Kernel.INT8 for k in kinds.values()):
        return {Policy.PRESERVING: "int8 passthrough", Policy.CLAMP: "int8 (fused clamp)"}.get(spec.policy,
                                                                                             "int8 output")
    floats = [f for f, k in kinds.items() if k is Kernel.FLOAT]
    missing = [f for f, k in kinds.items() if k is Kernel.NONE]
    detail = ", ".join(([f"float in {'/'.join(floats)}"] if floats else [])
                       + ([f"no {'/'.join(missing)} mapping"] if missing else []))
    return f"stays float ({detail})" if len(floats) + len(missing) == len(kinds) else detail


def verdict_for_module(module: nn.Module, formats: tuple[str, ...] = FORMATS) -> str:
    """:func:`verdict` of a module instance (the quant class comes from the registry)."""
    from compress.ops import quant_class_for

    return verdict(module_spec(module), formats, quant_class_for(module))
