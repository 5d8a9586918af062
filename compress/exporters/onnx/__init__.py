"""The ONNX exporter: QDQ int8 or fp32 at a pinned opset, its emitters registered against the op registry.

Layout (docs/architecture.md, "Exporters"): :mod:`.export` walks the graph and writes the file; :mod:`.graph`
holds the builder, the value model and the export context; the emitters live in one module per op family
(:mod:`.ops_float`, :mod:`.ops_quant`, :mod:`.ops_seq`, :mod:`.fallback` for the ops torch.onnx writes) and
:mod:`.emitters` imports them all; :mod:`.verify` runs the file in onnxruntime. Nothing here imports onnx
or onnxruntime until an export or a verification runs.
"""

from compress.exporters.onnx.export import (
    ActivationDType,
    OnnxExportConfig,
    OnnxExportInfo,
    export_onnx,
    trace_for_export,
)
from compress.exporters.onnx.graph import supported_ops
from compress.exporters.onnx.verify import verify_onnx

__all__ = [
    "ActivationDType",
    "OnnxExportConfig",
    "OnnxExportInfo",
    "export_onnx",
    "supported_ops",
    "trace_for_export",
    "verify_onnx",
]
