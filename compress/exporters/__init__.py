"""Exporters: ONNX (QDQ int8 or fp32, pinned opset), TFLite (flatbuffer written directly, float or full int8),
and verification of exported files against the torch simulation in the real runtime. onnx, onnxruntime,
flatbuffers, tflite and ai_edge_litert are imported only when an export or a verification runs.

Each format registers its emitters against the op registry (:mod:`compress.ops`) when its package is imported;
:func:`register_all_emitters` imports them all (the registry's completeness test walks the result).
"""

from compress.exporters.info import ExportInfo
from compress.exporters.onnx import (
    ActivationDType,
    OnnxExportConfig,
    OnnxExportInfo,
    export_onnx,
    trace_for_export,
    verify_onnx,
)
from compress.exporters.tflite import (
    XNNPACK_FLOAT_OPS,
    Int8Kernels,
    TFLiteExportConfig,
    TFLiteExportInfo,
    export_tflite,
    verify_tflite,
    xnnpack_delegation,
)
from compress.exporters.verify import OutputParity, ParityReport, VerifyConfig


def register_all_emitters() -> None:
    """Import the emitter modules of every format, so each op's registry entry holds its emitters.

    Example:
        >>> from compress import ops
        >>> register_all_emitters()
        >>> ops.get("conv2d").emitter("onnx", quantized=True).__name__
        '_quant_conv'
    """
    import compress.exporters.onnx.emitters  # noqa: F401
    import compress.exporters.tflite  # noqa: F401  (the TFLite exporter's emitter modules)


__all__ = [
    "XNNPACK_FLOAT_OPS",
    "ActivationDType",
    "ExportInfo",
    "Int8Kernels",
    "OnnxExportConfig",
    "OnnxExportInfo",
    "OutputParity",
    "ParityReport",
    "TFLiteExportConfig",
    "TFLiteExportInfo",
    "VerifyConfig",
    "export_onnx",
    "export_tflite",
    "register_all_emitters",
    "trace_for_export",
    "verify_onnx",
    "verify_tflite",
    "xnnpack_delegation",
]
