"""Distillation: a frozen teacher trains a smaller student (logits, features, attention), with or without labels.

``distill(teacher, student, train, DistillConfig(...), transfer=unlabelled)`` is the one entry point;
:func:`train_baseline` trains the same student alone with the same budget, so the gain is measured.
:class:`Distiller` is the module underneath, for your own training loop::

    d = Distiller(teacher, student, [KDLoss(4.0, 0.9), FeatureLoss("layer3", "layer2")]).build(x0)
    opt = torch.optim.AdamW(d.trainable_parameters())
    for x, y in loader:
        step = d(x, target=y); step.loss.backward(); opt.step(); opt.zero_grad()
    student = d.student_for_export()
"""

from compress.distill.derive import derive_student
from compress.distill.distiller import Distiller, DistillStep, unwrap, wrap_ddp
from compress.distill.losses import (
    AttentionMatrixLoss,
    AttentionTransfer,
    FeatureLoss,
    HiddenStateLoss,
    KDLoss,
    PairLoss,
    ValueRelationLoss,
    attention_map,
)
from compress.distill.train import (
    DistillConfig,
    DistillResult,
    distill,
    evaluate,
    make_losses,
    train_baseline,
)

__all__ = [
    "AttentionMatrixLoss",
    "AttentionTransfer",
    "DistillConfig",
    "DistillResult",
    "DistillStep",
    "Distiller",
    "FeatureLoss",
    "HiddenStateLoss",
    "KDLoss",
    "PairLoss",
    "ValueRelationLoss",
    "attention_map",
    "derive_student",
    "distill",
    "evaluate",
    "make_losses",
    "train_baseline",
    "unwrap",
    "wrap_ddp",
]
