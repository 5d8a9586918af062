"""Pruning: unstructured magnitude masks, N:M semi-structured masks, structured channel removal.

``prune(model, example_inputs, PruneConfig(...))`` is the one entry point (see :mod:`.api`); masks live in
:mod:`compress.layers.prune` and :func:`compress.layers.prune.finalize` bakes them into the weights.
"""

from compress.passes.prune.api import (
    PruneResult,
    apply_plan,
    export_program,
    load_plan,
    prune,
    save_plan,
    save_pruned,
)
from compress.passes.prune.config import (
    NM,
    Criterion,
    LatencyTarget,
    Mode,
    PruneConfig,
    Schedule,
    ScheduleKind,
    Scope,
)
from compress.passes.prune.finetune import FinetuneConfig, finetune
from compress.passes.prune.groups import ChannelGraph, Group, analyze
from compress.passes.prune.latency import TorchLatency
from compress.passes.prune.magnitude import magnitude_masks, nm_mask, nm_masks
from compress.passes.prune.report import accuracy, count_macs, count_nonzero, count_params, disk_sizes

__all__ = [
    "NM",
    "ChannelGraph",
    "Criterion",
    "FinetuneConfig",
    "Group",
    "LatencyTarget",
    "Mode",
    "PruneConfig",
    "PruneResult",
    "Schedule",
    "ScheduleKind",
    "Scope",
    "TorchLatency",
    "accuracy",
    "analyze",
    "apply_plan",
    "count_macs",
    "count_nonzero",
    "count_params",
    "disk_sizes",
    "export_program",
    "finetune",
    "load_plan",
    "magnitude_masks",
    "nm_mask",
    "nm_masks",
    "prune",
    "save_plan",
    "save_pruned",
]
