"""Exporters: ONNX (QDQ int8 or fp32, pinned opset) and verification of exported files against the torch
simulation. onnx / onnxruntime are imported only when an export or a verification runs."""

from compress.exporters.onnx import (
    ActivationDType,
    OnnxExportConfig,
    OnnxExportInfo,
    export_onnx,
    trace_for_export,
)
from compress.exporters.verify import OutputParity, ParityReport, VerifyConfig, verify_onnx

__all__ = [
    "ActivationDType",
    "OnnxExportConfig",
    "OnnxExportInfo",
    "OutputParity",
    "ParityReport",
    "VerifyConfig",
    "export_onnx",
    "trace_for_export",
    "verify_onnx",
]
