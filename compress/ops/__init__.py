"""THE op registry: every op the captured graph can contain, declared once (see :mod:`compress.ops.spec`).

Example:
    >>> from compress.ops import get, Kernel
    >>> get("mish").kernel("onnx") is Kernel.FLOAT
    True
"""

from compress.ops import kernels_onnx, kernels_tflite, nn_ops, tensor_ops
from compress.ops.spec import (
    FORMATS,
    Coupling,
    Emitter,
    Kernel,
    OpSpec,
    Policy,
    all_specs,
    get,
    lookup,
    module_spec,
    register_emitter,
    target_label,
)


def _apply_kernels() -> None:
    from compress.errors import CompressError

    tables = {"onnx": kernels_onnx.KERNELS, "tflite": kernels_tflite.KERNELS}
    for fmt, table in tables.items():
        unknown = set(table) - {s.name for s in all_specs()}
        if unknown:
            raise CompressError(f"kernels_{fmt}.py names ops that are not declared: {sorted(unknown)}")
    for spec in all_specs():
        for fmt, table in tables.items():
            spec.kernels[fmt] = table.get(spec.name, Kernel.NONE)


_apply_kernels()
del nn_ops, tensor_ops

__all__ = [
    "FORMATS",
    "Coupling",
    "Emitter",
    "Kernel",
    "OpSpec",
    "Policy",
    "all_specs",
    "get",
    "lookup",
    "module_spec",
    "quant_class_for",
    "register_emitter",
    "target_label",
]


def quant_class_for(module):
    """The compress layer that replaces a float weight layer, or None.

    Matches the exact type: a subclass of ``nn.Linear`` (a user's layer, or one of ours) may change the forward,
    so it is not assumed swappable (capture lowers it to what it computes). ``nn.LSTM(proj_size>0)`` has none.

    Example:
        >>> from torch import nn
        >>> quant_class_for(nn.LSTM(4, 8)).__name__, quant_class_for(nn.ReLU())
        ('QuantLSTM', None)
    """
    from torch import nn

    spec = module_spec(module)
    cls = spec.quant_classes().get(type(module)) if spec is not None else None
    if cls is None or isinstance(module, nn.LSTM) and getattr(module, "proj_size", 0):
        return None
    return cls
