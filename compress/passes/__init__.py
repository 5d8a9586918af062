"""Model transformations: BN folding, quantization (prepare → calibrate / QAT → convert), advanced PTQ."""

from compress.passes.calibrate import calibrate
from compress.passes.convert import convert
from compress.passes.describe import OpRow, describe
from compress.passes.fuse import fold_bn
from compress.passes.prepare import FloatOp, PrepareInfo, capture_graph, prepare
from compress.passes.prune import PruneConfig, PruneResult, apply_plan, prune
from compress.passes.ptq import (
    PTQConfig,
    adaround,
    correct_bias,
    cross_layer_equalize,
    select_ranges,
    smooth_quant,
)
from compress.passes.qat import OptimizerKind, QATConfig, freeze_bn_stats, resolve_device, train_qat

__all__ = [
    "FloatOp",
    "OpRow",
    "OptimizerKind",
    "PTQConfig",
    "PrepareInfo",
    "PruneConfig",
    "PruneResult",
    "QATConfig",
    "adaround",
    "apply_plan",
    "calibrate",
    "capture_graph",
    "convert",
    "correct_bias",
    "cross_layer_equalize",
    "describe",
    "fold_bn",
    "freeze_bn_stats",
    "prepare",
    "prune",
    "resolve_device",
    "select_ranges",
    "smooth_quant",
    "train_qat",
]
