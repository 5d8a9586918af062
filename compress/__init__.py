"""compress: quantize, prune and export PyTorch models for edge deployment.

The lifecycle is explicit: ``prepare`` → ``calibrate`` (PTQ) or ``train_qat`` (QAT) → ``convert`` →
``export_onnx`` → ``verify_onnx``; ``quantize_model`` runs all of it and writes a report.

Example:
    >>> import torch
    >>> import compress
    >>> from compress.models import DemoCNN
    >>> model = compress.prepare(DemoCNN(), torch.randn(1, 1, 8, 8))
    >>> model = compress.convert(compress.calibrate(model, [torch.rand(8, 1, 8, 8)], progress=False))

onnx / onnxruntime are imported only when an exporter runs: ``import compress`` stays light.
"""

from __future__ import annotations

import importlib

from compress.distill import (
    AttentionMatrixLoss,
    AttentionTransfer,
    DistillConfig,
    Distiller,
    DistillResult,
    DistillStep,
    FeatureLoss,
    HiddenStateLoss,
    KDLoss,
    ValueRelationLoss,
    derive_student,
    train_baseline,
)
from compress.errors import (
    CompressError,
    ConfigError,
    DataError,
    ExportError,
    MissingDependencyError,
    ModelLoadError,
    QualityError,
    ResourceError,
    UnsafePickleError,
    VerificationError,
)
from compress.io import Dataset, load_data, load_model
from compress.layers import (
    FusedActivation,
    QuantAdaptiveAvgPool2d,
    QuantAdd,
    QuantAvgPool2d,
    QuantCat,
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantConvBnReLU2d,
    QuantDropout,
    QuantEmbedding,
    QuantGELU,
    QuantGRU,
    QuantHardswish,
    QuantLayerNorm,
    QuantLinear,
    QuantLSTM,
    QuantMatmul,
    QuantMaxPool2d,
    QuantMul,
    QuantMultiheadAttention,
    QuantReLU,
    QuantReLU6,
    QuantSigmoid,
    QuantSoftmax,
    QuantTanh,
)
from compress.passes import (
    FloatOp,
    OptimizerKind,
    PrepareInfo,
    QATConfig,
    calibrate,
    convert,
    fold_bn,
    freeze_bn_stats,
    prepare,
    train_qat,
)
from compress.pipeline import QuantizeOptions, Target, quantize_model
from compress.quant import (
    ACT_INT8,
    WEIGHT_INT8,
    WEIGHT_INT8_PER_TENSOR,
    ObserverKind,
    PerChannel,
    PerTensor,
    QuantConfig,
    Quantizer,
    QuantSpec,
    QuantState,
)

__version__ = "0.1.0"

# Exporter names resolve on first use (PEP 562), so that `import compress` does not import onnx.
_LAZY = {
    "ActivationDType": "compress.exporters.onnx",
    "OnnxExportConfig": "compress.exporters.onnx",
    "OnnxExportInfo": "compress.exporters.onnx",
    "export_onnx": "compress.exporters.onnx",
    "ParityReport": "compress.exporters.verify",
    "verify_onnx": "compress.exporters.onnx",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")


__all__ = [
    "ACT_INT8",
    "WEIGHT_INT8",
    "WEIGHT_INT8_PER_TENSOR",
    "ActivationDType",
    "AttentionMatrixLoss",
    "AttentionTransfer",
    "CompressError",
    "ConfigError",
    "DataError",
    "Dataset",
    "DistillConfig",
    "DistillResult",
    "DistillStep",
    "Distiller",
    "ExportError",
    "FloatOp",
    "FeatureLoss",
    "FusedActivation",
    "MissingDependencyError",
    "HiddenStateLoss",
    "KDLoss",
    "ModelLoadError",
    "ObserverKind",
    "OnnxExportConfig",
    "OnnxExportInfo",
    "OptimizerKind",
    "ParityReport",
    "PerChannel",
    "PerTensor",
    "PrepareInfo",
    "QualityError",
    "QATConfig",
    "QuantAdaptiveAvgPool2d",
    "QuantAdd",
    "QuantAvgPool2d",
    "QuantCat",
    "QuantConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantConvBnReLU2d",
    "QuantDropout",
    "QuantEmbedding",
    "QuantGELU",
    "QuantGRU",
    "QuantHardswish",
    "QuantLSTM",
    "QuantLayerNorm",
    "QuantLinear",
    "QuantMatmul",
    "QuantMaxPool2d",
    "QuantMul",
    "QuantMultiheadAttention",
    "QuantReLU",
    "QuantReLU6",
    "QuantSigmoid",
    "QuantSoftmax",
    "QuantSpec",
    "QuantState",
    "QuantTanh",
    "Quantizer",
    "QuantizeOptions",
    "Target",
    "ResourceError",
    "UnsafePickleError",
    "ValueRelationLoss",
    "VerificationError",
    "calibrate",
    "convert",
    "derive_student",
    "export_onnx",
    "fold_bn",
    "freeze_bn_stats",
    "load_data",
    "load_model",
    "prepare",
    "quantize_model",
    "train_qat",
    "train_baseline",
    "verify_onnx",
]
