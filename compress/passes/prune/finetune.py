"""Recovery after pruning: a short fine-tuning loop that also steps the sparsity schedule.

It reuses the QAT loop's pieces (device choice, labelled batches from a Dataset or an iterable) and adds what
pruning needs: masks recomputed every ``schedule.frequency`` steps while the schedule ramps (Zhu & Gupta's
gradual pruning), and BatchNorm statistics trained in the loop, which re-estimates them after channels were
removed. Masked weights stay zero throughout (their gradients are zero and the mask is applied in forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from compress.errors import DataError
from compress.passes.prune.config import Mode, PruneConfig, ScheduleKind
from compress.passes.prune.magnitude import magnitude_masks
from compress.passes.qat import _count_batches, _labelled_batches, check_training_options, resolve_device


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of :func:`finetune` (AdamW, cosine decay to 0).

    Args:
        epochs: passes over the training data.
        lr: peak learning rate; fine-tuning a pruned net: ~1/3 of the from-scratch rate works on small nets.
        batch_size: batch size when the data is a Dataset.
        weight_decay: decoupled weight decay.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        seed: shuffling seed.
    """

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        check_training_options(self.epochs, self.lr, self.batch_size)


def finetune(model: nn.Module, train_data, config: FinetuneConfig | None = None, *,
             prune_config: PruneConfig | None = None, loss_fn: nn.Module | None = None) -> list[float]:
    """Train ``model`` (pruned, masked or both) on labelled ``train_data``; returns the mean loss per epoch.

    With an unstructured ``prune_config`` whose schedule ramps, the masks follow
    ``schedule.sparsity_at(step, sparsity)``, recomputed every ``schedule.frequency`` steps and once more at the
    end, so the model ends at the final sparsity. The model ends on the CPU in eval mode.

    Example:
        >>> from torch import nn
        >>> from compress.passes.prune import PruneConfig, Schedule, ScheduleKind, prune
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> cfg = PruneConfig(sparsity=0.75, schedule=Schedule(ScheduleKind.POLYNOMIAL, 0, 8, frequency=2))
        >>> _ = prune(net, torch.randn(2, 8), cfg)  # step 0 of the schedule: still dense
        >>> data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(4)]
        >>> len(finetune(net, data, FinetuneConfig(epochs=2), prune_config=cfg))
        2
        >>> round(float((net[0].weight == 0).float().mean()), 2)
        0.75
    """
    config = config or FinetuneConfig()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = max(config.epochs * _count_batches(train_data, config.batch_size), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    gradual = (prune_config is not None and prune_config.mode is Mode.UNSTRUCTURED
               and prune_config.schedule.kind is not ScheduleKind.ONE_SHOT)
    step, history = 0, []
    for epoch in range(config.epochs):
        losses = []
        for inputs, y in _labelled_batches(train_data, config.batch_size, config.seed + epoch):
            if gradual and step % prune_config.schedule.frequency == 0:
                magnitude_masks(model, prune_config, prune_config.schedule.sparsity_at(step, prune_config.sparsity))
            loss = loss_fn(model(*(x.to(device) for x in inputs)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
        if not losses:
            raise DataError("the training set is empty; pass labelled batches (x, y)")
        history.append(sum(losses) / len(losses))
    if gradual:
        magnitude_masks(model, prune_config, prune_config.sparsity)
    model.cpu().eval()
    return history
