"""Training with a teacher: :func:`distill`, and :func:`train_baseline` (the same student, budget and loop,
hard labels only), so the gain from distillation is measured rather than assumed.

The loop reuses the QAT loop's pieces (device choice, labelled batches, the rank split under DDP, the
progress bar) and adds what distillation needs: unlabelled transfer batches mixed with the labelled ones,
mixed precision, a checkpoint after every epoch with ``resume``, and the zero-gradient check.

Several GPUs: ``torchrun --nproc-per-node N script.py``; when ``torch.distributed`` is initialised the student
(and its adapters) is wrapped in DistributedDataParallel, the teacher is replicated on every rank unwrapped,
each rank takes every N-th batch and the history holds the loss averaged over ranks.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.distill.distiller import Distiller, DistillStep, _Trainable, unwrap, wrap_ddp
from compress.distill.losses import (
    AttentionMatrixLoss,
    AttentionTransfer,
    FeatureLoss,
    HiddenStateLoss,
    KDLoss,
    ValueRelationLoss,
    first_tensor,
)
from compress.errors import ConfigError, DataError
from compress.io.atomic import write_bytes_atomic
from compress.passes.calibrate import _progress, iter_inputs
from compress.passes.prune.report import accuracy
from compress.passes.qat import (
    _count_batches,
    _distributed,
    _labelled_batches,
    check_training_options,
    freeze_bn_stats,
    resolve_device,
)
from compress.quant.fake import Quantizer

__all__ = ["DistillConfig", "DistillResult", "distill", "evaluate", "make_losses", "train_baseline"]

#: ``DistillConfig.losses`` names → the loss built for each ``features`` pair (``kd`` needs no pair).
PAIR_LOSSES = {"feature": FeatureLoss, "attention": AttentionTransfer, "hidden": HiddenStateLoss,
               "attention_matrix": AttentionMatrixLoss, "value_relation": ValueRelationLoss}
LOSS_NAMES = ("kd", *PAIR_LOSSES)
PRECISIONS = ("auto", "off", "bf16", "fp16")
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class DistillConfig:
    """Options of :func:`distill` and :func:`train_baseline` (AdamW, cosine decay to 0).

    Args:
        epochs: passes over the training data (labelled plus transfer batches).
        lr: peak learning rate.
        batch_size: samples per batch (per rank under DDP).
        temperature: KD softening temperature T.
        alpha: weight of the KD term against the hard-label cross-entropy on labelled batches.
        losses: any of ``kd``, ``feature``, ``attention``, ``hidden``, ``attention_matrix``,
            ``value_relation``; all but ``kd`` are built for every ``features`` pair.
        features: ``(teacher_path, student_path)`` pairs of module paths, e.g. ``(("layer3", "layer2"),)``.
        seed: initialisation and batch-order seed (two runs with one seed train the same weights).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        checkpoint_dir: write ``distill-last.pt`` (``baseline-last.pt``) there after every epoch.
        resume: continue from the checkpoint in ``checkpoint_dir`` (start afresh when there is none).
        mixed_precision: ``auto`` (bf16 / fp16 autocast on CUDA, off on CPU and for QAT students), ``off``,
            ``bf16`` or ``fp16`` (CUDA only, with loss scaling).
        weight_decay: decoupled weight decay.
        freeze_bn_epochs: freeze BatchNorm statistics for this many final epochs (QAT students).

    Example:
        >>> DistillConfig(losses=("kd", "feature"), features=(("conv2", "conv1"),)).features
        (('conv2', 'conv1'),)
    """

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    temperature: float = 4.0
    alpha: float = 0.9
    losses: tuple[str, ...] = ("kd",)
    features: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    device: str = "auto"
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    mixed_precision: str = "auto"
    weight_decay: float = 0.0
    freeze_bn_epochs: int = 0

    def __post_init__(self):
        check_training_options(self.epochs, self.lr, self.batch_size)
        losses = (self.losses,) if isinstance(self.losses, str) else tuple(self.losses)
        object.__setattr__(self, "losses", losses)
        unknown = [n for n in losses if n not in LOSS_NAMES]
        if unknown or not losses:
            raise ConfigError(f"unknown distillation loss {', '.join(unknown) or '(none)'}; choose from "
                              f"{', '.join(LOSS_NAMES)}")
        pairs = tuple(tuple(p) for p in self.features)
        if any(len(p) != 2 or not all(isinstance(s, str) and s for s in p) for p in pairs):
            raise ConfigError(f"features must be (teacher_path, student_path) pairs, got {self.features!r}")
        object.__setattr__(self, "features", pairs)
        wants_pairs = [n for n in losses if n in PAIR_LOSSES]
        if wants_pairs and not pairs:
            raise ConfigError(f"loss {wants_pairs[0]} compares intermediate outputs: give feature pairs, e.g. "
                              "features=(('layer3', 'layer2'),) (--feature teacher.layer3:student.layer2)")
        if pairs and not wants_pairs:
            raise ConfigError("feature pairs are given but no loss uses them; add 'feature' (or 'attention', "
                              "'hidden', 'attention_matrix', 'value_relation') to losses")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in 0..1, got {self.alpha}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume needs checkpoint_dir (where the previous run wrote its checkpoint)")
        if not 0 <= self.freeze_bn_epochs <= self.epochs:
            raise ConfigError(f"freeze_bn_epochs must be in 0..epochs, got {self.freeze_bn_epochs}")


@dataclass
class DistillResult:
    """What :func:`distill` / :func:`train_baseline` return.

    Attributes:
        student: the trained student (adapters dropped), on the CPU in eval mode.
        history: one dict per epoch: ``epoch``, ``loss`` and each loss part (means over the epoch's batches,
            averaged over ranks), ``metric`` (accuracy on ``eval_data`` or None), ``seconds``.
        metric: the last epoch's accuracy on ``eval_data`` (None without it).
        steps: optimizer steps taken (pass it to :func:`train_baseline` for an equal budget).
    """

    student: nn.Module
    history: list[dict] = field(default_factory=list)
    metric: float | None = None
    steps: int = 0


def make_losses(config: DistillConfig) -> list[nn.Module]:
    """The loss modules ``config.losses`` × ``config.features`` name.

    Example:
        >>> [type(x).__name__ for x in make_losses(DistillConfig(losses=("kd", "attention"),
        ...                                                        features=(("b", "a"),)))]
        ['KDLoss', 'AttentionTransfer']
    """
    out: list[nn.Module] = []
    for name in config.losses:
        if name == "kd":
            out.append(KDLoss(config.temperature, config.alpha))
        else:
            out.extend(PAIR_LOSSES[name](t, s) for t, s in config.features)
    return out


class _OnDevice(nn.Module):
    """Feeds CPU batches to a model on another device (the accuracy helper iterates CPU datasets)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, *inputs):
        return self.model(*(x.to(self.device) for x in inputs))


def evaluate(model: nn.Module, data, batch_size: int = 256) -> float:
    """Top-1 accuracy of a classifier on a labelled :class:`compress.io.Dataset`, on the model's device.

    The model's train / eval mode is left as it was.

    Example:
        >>> from compress.io import Dataset
        >>> net = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.eye(2)), net.bias.zero_()
        >>> evaluate(net, Dataset(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0]]), np.array([0, 1, 0])))
        0.6666666666666666
    """
    if getattr(data, "y", None) is None:
        raise DataError("evaluation needs labels: pass eval data with y (an .npz with x and y)")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was = model.training
    try:
        acc = accuracy(_OnDevice(model, device), data, batch_size)
    finally:
        model.train(was)
    if acc is None:
        raise DataError("the model's output is not [N, classes]; evaluate() measures classification accuracy")
    return acc


def _amp_dtype(mode: str, device: torch.device, student: nn.Module) -> torch.dtype | None:
    if mode == "off":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("mixed_precision='fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    # auto: fake-quantized students keep float32 (their scales are learnt to a precision bf16 lacks).
    if device.type != "cuda" or any(isinstance(m, Quantizer) for m in student.modules()):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _input_batches(data, batch_size: int, seed: int):
    """Unlabelled inputs (labels, if any, ignored), shuffled when ``data`` is a Dataset."""
    if hasattr(data, "batches"):
        source = ((x if isinstance(x, tuple) else (x,)) for x, _ in data.batches(batch_size, shuffle=True, seed=seed))
    else:
        source = iter_inputs(data, batch_size)
    for inputs in source:
        yield tuple(torch.as_tensor(v) for v in inputs), None


def _epoch_batches(train, transfer, batch_size: int, seed: int, dist_info):
    """This epoch's (inputs, labels-or-None) batches: labelled and transfer batches in one seeded shuffle, streamed.

    Under DDP every rank walks the same order and keeps every N-th batch, the remainder dropped, so all ranks
    take the same number of steps (DDP all-reduces each one).
    """
    streams, counts = [], []
    for data, labelled in ((train, True), (transfer, False)):
        if data is None:
            continue
        if labelled and hasattr(data, "batches") and getattr(data, "y", 0) is None:
            labelled = False  # an unlabelled --train set: teacher outputs only, like transfer data
        salt = 0 if labelled else 7919  # transfer data shuffled independently of the labelled set
        source = _labelled_batches(data, batch_size, seed) if labelled else _input_batches(data, batch_size, seed + salt)
        count = _count_batches(data, batch_size)
        if count == 0:  # an iterable of unknown length: read it to count
            source = list(source)
            count = len(source)
        streams.append(iter(source))
        counts.append(count)
    if len(streams) == 1 and dist_info is None:
        yield from streams[0]
        return
    flags = np.repeat(np.arange(len(streams)), counts)
    if len(streams) > 1:
        flags = np.random.default_rng(seed).permutation(flags)
    rank, world = dist_info if dist_info is not None else (0, 1)
    for i, which in enumerate(flags[:len(flags) - len(flags) % world]):
        batch = next(streams[which], None)
        if batch is None:
            return
        if i % world == rank:
            yield batch


class _BaselineStep(nn.Module):
    """The baseline's step: the student on hard labels (cross-entropy), no teacher."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.trainable = _Trainable(unwrap(student))
        self.__dict__["_runner"] = self.trainable

    def enable_ddp(self, device):
        self.__dict__["_runner"] = wrap_ddp(self.trainable, device)

    def trainable_parameters(self):
        return [p for p in self.trainable.parameters() if p.requires_grad]

    def forward(self, *inputs, target=None) -> DistillStep:
        out = self._runner(*inputs)
        ce = F.cross_entropy(first_tensor(out).float(), target)
        return DistillStep(ce, {"ce": ce}, out)

    def check_gradients(self, epoch=None):
        pass

    def part_names(self) -> list[str]:
        return ["ce"]


def distill(teacher: nn.Module, student: nn.Module, train, config: DistillConfig | None = None, *,
            transfer=None, eval_data=None, progress: bool = True, losses=None) -> DistillResult:
    """Train ``student`` to match ``teacher`` on ``train`` (labelled) and ``transfer`` (inputs only) data.

    Labelled batches use the hard labels as well (``alpha`` blend); transfer batches use the teacher's
    outputs alone. The student is trained in place and ends on the CPU in eval mode; the teacher is left as
    it was (device, ``requires_grad``).

    Args:
        teacher: the trained model; frozen while distilling.
        student: the model to train: plain, QAT-prepared and calibrated, or pruned (masks stay applied).
        train: a :class:`compress.io.Dataset` (labels optional) or an iterable of ``(x, y)`` batches.
        config: training options; ``config.losses`` / ``config.features`` build the losses.
        transfer: unlabelled data (a Dataset or an iterable of input batches) the teacher labels.
        eval_data: labelled data evaluated after every epoch.
        progress: show a progress bar with the loss parts.
        losses: loss modules to use instead of those ``config`` names.

    Returns:
        :class:`DistillResult`.

    Raises:
        ConfigError: an unknown module path (the message lists close names), incompatible shapes.
        QualityError: a loss term that got zero gradient for a whole epoch.

    Example:
        >>> from compress.io import Dataset
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 4, generator=g)
        >>> teacher = nn.Linear(4, 3)
        >>> data = Dataset(x.numpy(), teacher(x).argmax(1).numpy())
        >>> result = distill(teacher, nn.Linear(4, 3), data, DistillConfig(epochs=2, device="cpu"), progress=False)
        >>> len(result.history), result.steps
        (2, 4)
    """
    config = config or DistillConfig()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    frozen = {p: p.requires_grad for p in unwrap(teacher).parameters()}
    teacher_device = next(iter(frozen), torch.zeros(0)).device
    distiller = Distiller(teacher, student, losses if losses is not None else make_losses(config)).to(device)
    first = _first_batch(train, transfer, config.batch_size)
    distiller.build(*(x.to(device) for x in first))
    try:
        steps, history = _fit(distiller, train, transfer, config, device, eval_data, progress, None, "distill")
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        unwrap(teacher).to(teacher_device)
    trained = distiller.student_for_export().cpu().eval()
    return DistillResult(trained, history, history[-1]["metric"] if history else None, steps)


def train_baseline(student: nn.Module, train, config: DistillConfig | None = None, *, eval_data=None,
                   progress: bool = True, steps: int | None = None) -> DistillResult:
    """Train ``student`` on the labelled ``train`` data alone with the loop, options and budget of :func:`distill`.

    Args:
        student: the model to train (in place).
        train: labelled data (a Dataset with ``y`` or ``(x, y)`` batches).
        config: the options given to :func:`distill` (the loss options are unused).
        eval_data: labelled data evaluated after every epoch.
        progress: show a progress bar.
        steps: optimizer steps to take instead of ``config.epochs`` passes: give the distillation run's
            ``DistillResult.steps`` so a student with few labels gets the same training budget.

    Example:
        >>> from compress.io import Dataset
        >>> data = Dataset(np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 3)
        >>> r = train_baseline(nn.Linear(4, 3), data, DistillConfig(epochs=1, device="cpu"), progress=False, steps=5)
        >>> r.steps, len(r.history)
        (5, 3)
    """
    config = config or DistillConfig()
    if hasattr(train, "batches") and getattr(train, "y", None) is None:
        raise DataError("the baseline trains on hard labels: pass training data with y (an .npz with x and y)")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be ≥ 1, got {steps}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    step = _BaselineStep(student).to(device)
    done, history = _fit(step, train, None, config, device, eval_data, progress, steps, "baseline")
    trained = step.trainable.student.cpu().eval()
    return DistillResult(trained, history, history[-1]["metric"] if history else None, done)


def _first_batch(train, transfer, batch_size: int) -> tuple[torch.Tensor, ...]:
    for data in (train, transfer):
        if data is not None:
            for inputs, _ in _input_batches(data, batch_size, 0):
                return inputs
    raise DataError("the training set is empty; pass labelled --train data or --transfer inputs")


def _fit(task: nn.Module, train, transfer, config: DistillConfig, device: torch.device, eval_data, progress: bool,
         max_steps: int | None, what: str) -> tuple[int, list[dict]]:
    """The shared loop; returns (optimizer steps, history)."""
    dist_info = _distributed()
    world = dist_info[1] if dist_info else 1
    task.train()
    task.enable_ddp(device)
    student = task.trainable.student
    amp = _amp_dtype(config.mixed_precision, device, student)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = _count_batches(train, config.batch_size) if train is not None else 0
    if transfer is not None:
        per_epoch += _count_batches(transfer, config.batch_size)
    per_epoch = max(per_epoch // world, 1)
    total = max_steps or config.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    ckpt = None if config.checkpoint_dir is None else Path(config.checkpoint_dir) / f"{what}-last.pt"
    start, step, history = 0, 0, []
    if ckpt is not None and ckpt.exists():
        if not config.resume:
            raise ConfigError(f"{ckpt} already exists; pass resume=True (--resume) to continue from it or choose "
                              "an empty checkpoint_dir")
        start, step, history = _load_checkpoint(ckpt, task, opt, sched, scaler, device, config, total)
    rank0 = dist_info is None or dist_info[0] == 0
    bar, bar_task = _progress(total, f"{what} epoch 1/{epochs}", progress and rank0)
    with bar:
        bar.update(bar_task, completed=step)
        for epoch in range(start, epochs):
            if step >= total:
                break
            t0 = time.perf_counter()
            task.train()
            if epoch >= epochs - config.freeze_bn_epochs:
                freeze_bn_stats(student)
            sums: dict[str, torch.Tensor] = {}
            counts: dict[str, int] = {}
            for inputs, y in _epoch_batches(train, transfer, config.batch_size, config.seed + epoch, dist_info):
                if step >= total:
                    break
                inputs = tuple(x.to(device, non_blocking=True) for x in inputs)
                y = None if y is None else y.to(device)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    out = task(*inputs, target=y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(out.loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    out.loss.backward()
                    opt.step()
                sched.step()
                step += 1
                for name, value in {"loss": out.loss, **out.parts}.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
                    counts[name] = counts.get(name, 0) + 1
                if step % 10 == 0 or step == total:
                    shown = " ".join(f"{k} {float(sums[k]) / counts[k]:.3f}" for k in sums)
                    bar.update(bar_task, description=f"{what} epoch {epoch + 1}/{epochs} · {shown}")
                bar.update(bar_task, completed=step)
            if not counts:
                raise DataError("the training set is empty; pass labelled batches (x, y) or transfer inputs")
            task.check_gradients(epoch)
            names = ["loss", *sorted(task.part_names())]
            row = {"epoch": epoch + 1, **_mean_over_ranks(names, sums, counts, device, dist_info is not None)}
            row["metric"] = evaluate(student, eval_data) if eval_data is not None else None
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            if ckpt is not None and rank0:
                _save_checkpoint(ckpt, task, opt, sched, scaler, epoch + 1, step, history, config, total)
    return step, history


def _mean_over_ranks(names: list[str], sums: dict, counts: dict, device, distributed: bool) -> dict[str, float]:
    """Each part's mean over the batches that had it, pooled over ranks; parts no batch had are left out.

    ``names`` is the same fixed list on every rank (a rank may see no labelled batch, hence no ``ce``): the
    all-reduced tensor must have one shape everywhere.
    """
    zero = torch.zeros((), device=device)
    packed = torch.stack([torch.stack([sums.get(k, zero).to(device),
                                       torch.tensor(float(counts.get(k, 0)), device=device)]) for k in names])
    if distributed:
        torch.distributed.all_reduce(packed)
    return {k: float(packed[i, 0] / packed[i, 1]) for i, k in enumerate(names) if packed[i, 1] > 0}


#: The options a resumed run must share with the run that wrote the checkpoint (the rest may change:
#: device, precision, where checkpoints go).
RESUME_KEYS = ("lr", "batch_size", "temperature", "alpha", "losses", "features", "seed", "weight_decay",
               "freeze_bn_epochs")


def _fingerprint(config: DistillConfig, total: int) -> dict[str, str]:
    return {"steps": str(total), **{k: str(getattr(config, k)) for k in RESUME_KEYS}}


def _save_checkpoint(path: Path, task, opt, sched, scaler, epoch: int, step: int, history: list, config,
                     total: int) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": step,
        "history": history,
        "trainable": task.trainable.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": _fingerprint(config, total),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue(), option="checkpoint_dir")


def _load_checkpoint(path: Path, task, opt, sched, scaler, device, config, total: int) -> tuple[int, int, list]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        saved = state["config"]
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable distillation checkpoint ({str(exc).splitlines()[0][:120]}); "
                          "delete it or choose another checkpoint_dir") from exc
    changed = [f"{k} {saved.get(k)} → {v}" for k, v in _fingerprint(config, total).items() if saved.get(k) != v]
    if changed:
        raise ConfigError(f"{path} was written with other options ({'; '.join(changed)}); resume with the same "
                          "options, or choose another checkpoint_dir to start afresh")
    try:
        task.trainable.load_state_dict(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path} does not match this student ({str(exc).splitlines()[0][:160]}); delete it or "
                          "choose another checkpoint_dir") from exc
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"].cpu())
    if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda_rng"]])
    return int(state["epoch"]), int(state["step"]), list(state["history"])
