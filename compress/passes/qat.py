"""Quantization-aware training: a small, complete training loop for prepared models.

Any training loop works on a model from ``prepare(..., qat=True)`` after ``calibrate`` — it is an ordinary
``nn.Module`` whose forward simulates int8. :func:`train_qat` is the loop we use ourselves: AdamW or SGD,
cosine learning-rate decay, CUDA when present, BatchNorm statistics frozen for the last epoch(s) so the final
epochs train exactly the folded conv that gets exported.

Using your own loop::

    model = prepare(float_model, example, qat=True)
    calibrate(model, calib_batches)          # initial activation ranges
    for x, y in loader:                      # your loop, optimizer, schedule, DDP wrapper...
        loss = criterion(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    freeze_bn_stats(model)                   # optional, for the last epoch
    int8 = convert(model.cpu())

Several GPUs: launch with ``torchrun --nproc-per-node N your_script.py``; when ``torch.distributed`` is
initialised, :func:`train_qat` wraps the model in DistributedDataParallel, gives each rank every N-th batch,
and returns the same trained weights on every rank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from compress.errors import ConfigError, DataError
from compress.layers.conv import QuantConvBn2d
from compress.passes.calibrate import _progress


class OptimizerKind(str, Enum):
    ADAMW = "adamw"
    SGD = "sgd"


@dataclass(frozen=True)
class QATConfig:
    """Options of :func:`train_qat`.

    Args:
        epochs: passes over the training data.
        lr: peak learning rate (cosine-decayed to 0). QAT fine-tunes: use ~1/10 of the from-scratch rate.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        weight_decay: decoupled weight decay.
        batch_size: batch size when the data is a Dataset.
        freeze_bn_epochs: freeze BatchNorm statistics for this many final epochs.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:N]"``.
        seed: shuffling and initialisation seed.
    """

    epochs: int = 3
    lr: float = 1e-3
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    weight_decay: float = 0.0
    batch_size: int = 32
    freeze_bn_epochs: int = 1
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        check_training_options(self.epochs, self.lr, self.batch_size)
        try:
            object.__setattr__(self, "optimizer", OptimizerKind(self.optimizer))
        except ValueError:
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}") from None


def check_training_options(epochs: int, lr: float, batch_size: int) -> None:
    """The checks every training config (QAT, pruning's fine-tune) makes; raises ConfigError naming the option."""
    if epochs < 1:
        raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")


def _distributed() -> tuple[int, int] | None:
    """(rank, world size) when running under an initialised torch.distributed process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available (this rank's GPU under torchrun), else CPU.

    An explicit CUDA request without CUDA is an error.
    """
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return dev


def freeze_bn_stats(model: nn.Module) -> None:
    """Stop BatchNorm running-statistics updates in every fused Conv+BN of ``model``."""
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn_stats()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_qat(
    model: nn.Module,
    train_data,
    config: QATConfig | None = None,
    *,
    loss_fn: nn.Module | None = None,
    progress: bool = True,
) -> list[float]:
    """Fine-tune a prepared, calibrated model with fake quantization in the loop.

    Args:
        model: from ``prepare(..., qat=True)`` followed by ``calibrate``.
        train_data: a :class:`compress.io.Dataset` with labels, or an iterable of ``(x, y)`` batches
            (``((a, b), y)`` for a model with several inputs).
        config: training options.
        loss_fn: defaults to cross-entropy (classification).
        progress: show a progress bar.

    Returns:
        The mean training loss of each epoch. The model ends on the CPU in eval mode.
    """
    config = config or QATConfig()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    dist_info = _distributed()
    trained: nn.Module = model
    if dist_info is not None:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.optimizer is OptimizerKind.SGD:
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = _count_batches(train_data, config.batch_size)
    if dist_info is not None:
        steps_per_epoch //= dist_info[1]
    total = max(config.epochs * steps_per_epoch, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    history = []
    bar, task = _progress(total, "QAT training", progress and (dist_info is None or dist_info[0] == 0))
    with bar:
        for epoch in range(config.epochs):
            if epoch >= config.epochs - config.freeze_bn_epochs:
                freeze_bn_stats(model)
            losses = []
            for inputs, y in _labelled_batches(train_data, config.batch_size, config.seed + epoch, dist_info):
                y = y.to(device)
                loss = loss_fn(trained(*(x.to(device) for x in inputs)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.advance(task)
            if not losses:
                raise DataError("the training set is empty; pass labelled batches (x, y)")
            history.append(sum(losses) / len(losses))
    model.cpu().eval()
    return history


def _count_batches(data, batch_size: int) -> int:
    if hasattr(data, "batches"):
        return math.ceil(len(data) / batch_size)
    try:
        return len(data)
    except TypeError:
        return 0


def _labelled_batches(data, batch_size: int, seed: int, dist_info: tuple[int, int] | None = None):
    source = data.batches(batch_size, shuffle=True, seed=seed) if hasattr(data, "batches") else data
    if dist_info is not None:
        # Every rank must run the same number of steps (DDP all-reduces each one): drop the remainder.
        rank, world = dist_info
        batches = list(source)
        usable = len(batches) - len(batches) % world
        source = batches[rank:usable:world]
    for batch in source:
        if not isinstance(batch, tuple | list) or len(batch) < 2 or batch[1] is None:
            raise DataError("QAT needs labels: pass an .npz with both x and y, or batches of (x, y)")
        x, y = batch[0], torch.as_tensor(batch[1])
        # One input or several (a tuple, in forward's order); integer inputs (token ids, masks) stay integer.
        inputs = tuple(torch.as_tensor(v) for v in x) if isinstance(x, tuple | list) else (torch.as_tensor(x),)
        yield tuple(v.float() if v.is_floating_point() else v for v in inputs), y.long()
