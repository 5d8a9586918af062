"""Importing this module registers every ONNX emitter with the op registry (:mod:`compress.ops`).

One module per op family; each registers its functions with :func:`~compress.exporters.onnx.graph.emitter`.
The exporter never keeps an op list of its own: it looks a node up in the registry and calls what is
registered there.
"""

from compress.exporters.onnx import (
    fallback,
    ops_conv_transpose,
    ops_dynamic,
    ops_float,
    ops_math,
    ops_quant,
    ops_seq,
    ops_tensor,
)

FAMILIES = (ops_float, ops_quant, ops_dynamic, ops_conv_transpose, ops_seq, ops_math, ops_tensor, fallback)
