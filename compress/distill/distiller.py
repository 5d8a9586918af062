"""The :class:`Distiller`: a frozen teacher and a trained student in one module whose forward returns the loss.

Intermediate tensors are collected with forward hooks registered on the *unwrapped* models, by module path,
so a student wrapped in DistributedDataParallel (or a path copied from a DDP state dict, ``module.layer2``)
still matches: the failure other tools have, where a ``module.`` prefix silently zeroes the loss, cannot
happen here. Every loss term's input passes through a gradient probe; a term whose gradient stays exactly
zero for a whole epoch is reported by :meth:`Distiller.check_gradients` (a detached feature, a frozen layer).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.distill.losses import AttentionMatrixLoss, KDLoss, PairLoss, first_tensor
from compress.errors import ConfigError, QualityError

__all__ = ["DistillStep", "Distiller", "unwrap", "wrap_ddp"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers (any depth).

    Example:
        >>> net = nn.Linear(2, 2)
        >>> unwrap(nn.DataParallel(net)) is net
        True
    """
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def wrap_ddp(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when ``torch.distributed`` is initialised, else as it is.

    Only what is trained goes in: the Distiller wraps its student (with the adapters), never the teacher,
    which has no gradients to synchronise (wrapping a frozen module in DDP fails, torchdistill#122).

    Example:
        >>> wrap_ddp(nn.Linear(2, 2)).__class__.__name__  # no process group here
        'Linear'
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return model
    ids = None
    if device is not None and device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _resolve(model: nn.Module, path: str, role: str) -> nn.Module:
    """The submodule at ``path`` (``module.`` prefixes stripped); an unknown path lists the closest names."""
    clean = path
    while clean.startswith("module."):
        clean = clean[len("module."):]
    names = dict(model.named_modules())
    if clean in names:
        return names[clean]
    close = difflib.get_close_matches(clean, [n for n in names if n], n=5, cutoff=0.4)
    hint = f"close names: {', '.join(close)}" if close else f"its modules include: {', '.join(list(names)[1:8])}"
    raise ConfigError(f"the {role} has no module {path!r}; {hint} (see model.named_modules())")


class _GradProbe(torch.autograd.Function):
    """Identity whose backward adds ``Σ|grad|`` to a tracker: the gradient one loss term sends to the student."""

    @staticmethod
    def forward(ctx, x, tracker: dict, key: str):
        ctx.tracker, ctx.key = tracker, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        total = grad.detach().abs().sum().float()
        ctx.tracker[ctx.key] = ctx.tracker.get(ctx.key, 0) + total
        return grad, None, None


@dataclass
class DistillStep:
    """What one :meth:`Distiller.forward` returns.

    Attributes:
        loss: the scalar to call ``backward()`` on (the sum of ``parts``).
        parts: the weighted terms by kind (``kd``, ``ce``, ``feature``, ``attention``, ``hidden``,
            ``attention_matrix``), each a scalar tensor.
        student_out: the student's output (for metrics).
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    student_out: object = None


def _make_adapter(s: torch.Tensor, t: torch.Tensor) -> nn.Module | None:
    """1×1 conv for feature maps (channels on axis 1), linear on the last axis otherwise; None when widths match."""
    if s.dim() == t.dim() and s.dim() in (3, 4, 5) and s.shape[2:] == t.shape[2:] and s.shape[1] != t.shape[1]:
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[s.dim()]
        return conv(s.shape[1], t.shape[1], 1, bias=False)
    if s.dim() == t.dim() and s.shape[:-1] == t.shape[:-1] and s.shape[-1] != t.shape[-1]:
        return nn.Linear(s.shape[-1], t.shape[-1], bias=False)
    return None


class _Trainable(nn.Module):
    """Student + adapters: the one module that is trained, moved, checkpointed and (under DDP) wrapped."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleDict()

    def forward(self, *inputs):
        return self.student(*inputs)


class Distiller(nn.Module):
    """Frozen teacher + student + losses; ``forward(*inputs, target=None)`` returns a :class:`DistillStep`.

    The teacher is put in eval mode with ``requires_grad=False`` and run under ``torch.no_grad()``; it stays
    in eval mode whatever ``train()`` is called with. Adapters (1×1 conv / linear, no bias) for feature
    losses whose widths differ are created from the first batch's shapes: call :meth:`build` on one batch
    before giving :meth:`trainable_parameters` to an optimizer. :meth:`student_for_export` returns the student
    alone.

    Args:
        teacher: the trained model (a DDP / DataParallel wrapper is removed).
        student: the model to train: plain, QAT-prepared (``prepare(..., qat=True)``) or pruned.
        losses: loss modules (:class:`KDLoss`, :class:`FeatureLoss`, ...), a sequence or ``{name: loss}``.
        adapters: ``{student_path: module}`` to use instead of the automatic adapters for those paths. The
            automatic ones are named after the student path (``d.adapters["layer2"]``; dots become ``__``), or
            ``"<student>__to__<teacher>"`` when several teacher layers hint one student layer.

    Example:
        >>> teacher, student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), nn.Linear(4, 3)
        >>> d = Distiller(teacher, student, [KDLoss(temperature=2.0)])
        >>> step = d(torch.randn(5, 4), target=torch.tensor([0, 1, 2, 0, 1]))
        >>> sorted(step.parts), step.loss.requires_grad
        (['ce', 'kd'], True)
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, losses, adapters: Mapping[str, nn.Module] | None = None):
        super().__init__()
        teacher = unwrap(teacher)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()
        self.trainable = _Trainable(unwrap(student))
        items = list(losses.values()) if isinstance(losses, Mapping) else list(losses) \
            if isinstance(losses, Sequence) else [losses]
        if not items:
            raise ConfigError("Distiller needs at least one loss, e.g. [KDLoss()]")
        for loss in items:
            if not isinstance(loss, KDLoss | PairLoss):
                raise ConfigError(f"unknown distillation loss {type(loss).__name__}; use KDLoss, FeatureLoss, "
                                  "AttentionTransfer, HiddenStateLoss or AttentionMatrixLoss")
        self.losses = nn.ModuleList(items)
        self._pairs = [loss for loss in items if isinstance(loss, PairLoss)]
        # Resolve every path now: a typo is a one-line error before any training starts.
        self._t_modules = {p.teacher_path: _resolve(self.teacher, p.teacher_path, "teacher") for p in self._pairs}
        self._s_modules = {p.student_path: _resolve(self.student, p.student_path, "student") for p in self._pairs}
        # One adapter per student path; a path hinted by several teacher layers gets one adapter per pair.
        shared = [p.student_path for p in self._pairs if p.adapt]
        self._adapter_keys = {id(p): _key(p.student_path) if shared.count(p.student_path) == 1
                              else f"{_key(p.student_path)}__to__{_key(p.teacher_path)}" for p in self._pairs}
        for path, module in (adapters or {}).items():
            _resolve(self.student, path, "student")
            for p in self._pairs:
                if p.adapt and _key(p.student_path) == _key(path):
                    self.trainable.adapters[self._adapter_keys[id(p)]] = module
        self._t_feats: dict[str, object] = {}
        self._s_feats: dict[str, object] = {}
        self._handles: list = []
        # Kept out of _modules (a plain attribute): the DDP wrapper must not be a second copy in state_dict().
        self.__dict__["_runner"] = self.trainable
        self.grad_seen: dict[str, torch.Tensor] = {}
        self._built = False

    @property
    def student(self) -> nn.Module:
        return self.trainable.student

    @property
    def adapters(self) -> nn.ModuleDict:
        return self.trainable.adapters

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # a frozen teacher keeps its BatchNorm statistics and has no dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student and adapter parameters that require gradients (call :meth:`build` first)."""
        return [p for p in self.trainable.parameters() if p.requires_grad]

    def enable_ddp(self, device: torch.device | None = None) -> None:
        """Wrap the student and adapters in DDP when ``torch.distributed`` is initialised (the teacher never)."""
        self.__dict__["_runner"] = wrap_ddp(self.trainable, device)

    def _ensure_hooks(self) -> None:
        if self._handles:
            return
        for path, module in self._t_modules.items():
            self._handles.append(module.register_forward_hook(_store(self._t_feats, path)))
        for path, module in self._s_modules.items():
            self._handles.append(module.register_forward_hook(_store(self._s_feats, path)))

    def remove_hooks(self) -> None:
        """Remove the forward hooks (they come back on the next forward)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def build(self, *inputs) -> Distiller:
        """Run one batch through both models to create the adapters the feature shapes call for."""
        was = self.trainable.training
        self.trainable.eval()
        try:
            self._collect(inputs, build=True)
        finally:
            self.trainable.train(was)
        self._built = True
        return self

    def _collect(self, inputs, build: bool = False):
        self._ensure_hooks()
        self._t_feats.clear()
        self._s_feats.clear()
        with torch.no_grad():
            t_out = self.teacher(*inputs)
        s_out = self.trainable(*inputs) if build else self._runner(*inputs)
        for loss in self._pairs:
            for role, feats, path in (("teacher", self._t_feats, loss.teacher_path),
                                      ("student", self._s_feats, loss.student_path)):
                if path not in feats:
                    raise ConfigError(f"{role} module {path!r} did not run in forward (no output to distil); "
                                      "pick a module the forward pass calls")
            key = self._adapter_keys[id(loss)]
            if loss.adapt and key not in self.adapters and build:
                s = first_tensor(self._s_feats[loss.student_path])
                adapter = _make_adapter(s, first_tensor(self._t_feats[loss.teacher_path]))
                if adapter is not None:
                    self.adapters[key] = adapter.to(device=s.device)
        return s_out, t_out

    def forward(self, *inputs, target: torch.Tensor | None = None) -> DistillStep:
        if not self._built:
            self.build(*inputs)
        s_out, t_out = self._collect(inputs)
        parts: dict[str, torch.Tensor] = {}
        for loss in self.losses:
            if isinstance(loss, KDLoss):
                s = _GradProbe.apply(first_tensor(s_out), self.grad_seen, "kd")
                terms = loss.components(s, first_tensor(t_out).detach(), target)
            else:
                pick = AttentionMatrixLoss.pick if isinstance(loss, AttentionMatrixLoss) else first_tensor
                s = _GradProbe.apply(pick(self._s_feats[loss.student_path]), self.grad_seen, loss.label)
                if loss.adapt and self._adapter_keys[id(loss)] in self.adapters:
                    s = self.adapters[self._adapter_keys[id(loss)]](s)
                terms = {loss.kind: loss(s, pick(self._t_feats[loss.teacher_path]).detach())}
            for name, value in terms.items():
                parts[name] = parts[name] + value if name in parts else value
        self._t_feats.clear()
        self._s_feats.clear()
        return DistillStep(sum(parts.values()), parts, s_out)

    def part_names(self) -> list[str]:
        """Every key ``DistillStep.parts`` can hold with these losses (``ce`` only on labelled batches)."""
        names = {"kd", "ce"} if any(isinstance(x, KDLoss) for x in self.losses) else set()
        return sorted(names | {p.kind for p in self._pairs})

    def check_gradients(self, epoch: int | None = None) -> None:
        """Raise :class:`QualityError` for a loss term that sent no gradient to the student since the last call.

        Called by :func:`compress.distill.distill` after every epoch; resets the record.
        """
        labels = (["kd"] if any(isinstance(x, KDLoss) for x in self.losses) else []) + [p.label for p in self._pairs]
        dead = [label for label in labels if not float(self.grad_seen.get(label, 0)) > 0]
        self.grad_seen.clear()
        if dead:
            when = f" in epoch {epoch + 1}" if epoch is not None else ""
            raise QualityError(f"distillation term {', '.join(dead)} got zero gradient{when}: the student output it "
                               "compares is detached, frozen or constant; hook a trainable module's output")

    def student_for_export(self) -> nn.Module:
        """The student alone, without hooks or adapters (what gets saved and exported)."""
        self.remove_hooks()
        return self.student


def _key(path: str) -> str:
    """A ModuleDict key for a module path (dots are not allowed in module names)."""
    while path.startswith("module."):
        path = path[len("module."):]
    return path.replace(".", "__")


def _store(feats: dict, path: str):
    def hook(_module, _inputs, output):
        feats[path] = output
    return hook
