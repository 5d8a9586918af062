"""Exporters: ONNX (QDQ int8 or fp32, pinned opset), TFLite (flatbuffer written directly, float or full int8),
and verification of exported files against the torch simulation in the real runtime. onnx, onnxruntime,
flatbuffers, tflite and ai_edge_litert are imported only when an export or a verification runs."""

from compress.exporters.onnx import (
    ActivationDType,
    OnnxExportConfig,
    OnnxExportInfo,
    export_onnx,
    trace_for_export,
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
from compress.exporters.verify import OutputParity, ParityReport, VerifyConfig, verify_onnx

__all__ = [
    "XNNPACK_FLOAT_OPS",
    "ActivationDType",
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
    "trace_for_export",
    "verify_onnx",
    "verify_tflite",
    "xnnpack_delegation",
]
