"""Distillation losses, each a small ``nn.Module`` of tensors only (the :class:`~compress.distill.Distiller`
collects the tensors; the losses never see a model).

* :class:`KDLoss` — logit distillation (Hinton et al. 2015): KL divergence of temperature-softened outputs,
  scaled by T² so its gradient does not shrink as T grows, blended with cross-entropy on the hard labels.
* :class:`FeatureLoss` — FitNets hints (Romero et al. 2015): MSE (or cosine distance) between an adapted
  student feature map and the teacher's.
* :class:`AttentionTransfer` — Zagoruyko & Komodakis 2017: spatial attention maps (sum over channels of
  squared activations, flattened, L2-normalised) compared with a squared distance; channel counts may differ.
* :class:`HiddenStateLoss` / :class:`AttentionMatrixLoss` — TinyBERT (Jiao et al. 2020): MSE of (adapted)
  hidden states and of attention matrices.
* :class:`ValueRelationLoss` — MiniLM (Wang et al. 2020): KL divergence of the value-relation matrices
  ``softmax(V·Vᵀ/√d)``; widths may differ, only the head count must match.

Feature losses name the modules whose outputs they compare by module path on the *unwrapped* models
(``layer3``, ``encoder.layers.2``; a ``module.`` prefix copied from a DDP state dict is stripped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError

__all__ = ["AttentionMatrixLoss", "AttentionTransfer", "FeatureLoss", "HiddenStateLoss", "KDLoss", "PairLoss",
           "ValueRelationLoss"]


def first_tensor(out) -> torch.Tensor:
    """A model's or module's main output: the tensor itself, or the first tensor of a tuple / list / dict."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, tuple | list) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise ConfigError(f"an output of type {type(out).__name__} holds no tensor; distil a module that returns one")


class KDLoss(nn.Module):
    """Logit distillation: ``alpha·T²·KL(p_t^T ‖ p_s^T) + (1 − alpha)·CE(s, y)``; without labels the KD term alone.

    ``p^T = softmax(logits / T)``; the KL divergence is summed over classes and averaged over the batch.
    On unlabelled (transfer) batches the teacher's outputs are the only target, so the KD term is used with
    weight 1 rather than ``alpha``.

    Args:
        temperature: softening temperature T (> 0); 4 is a common choice for small classifiers.
        alpha: weight of the KD term against the hard-label cross-entropy (0..1).

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])
        >>> float(KDLoss(temperature=2.0, alpha=1.0)(s, t, torch.tensor([0])))
        0.0
        >>> sorted(KDLoss().components(s, t, torch.tensor([0])))
        ['ce', 'kd']
    """

    kind = "kd"

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in 0..1, got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def components(self, student: torch.Tensor, teacher: torch.Tensor,
                   target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"kd": ..., "ce": ...}`` (weighted), or ``{"kd": ...}`` without ``target``."""
        if student.shape != teacher.shape:
            raise ConfigError(f"student outputs {tuple(student.shape)} but teacher outputs {tuple(teacher.shape)}; "
                              "logit distillation needs the same number of classes")
        t = self.temperature
        log_ps = F.log_softmax(student.float() / t, dim=-1)
        log_pt = F.log_softmax(teacher.float() / t, dim=-1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        kd = kl * (t * t)
        if target is None:
            return {"kd": kd}
        return {"kd": self.alpha * kd, "ce": (1.0 - self.alpha) * F.cross_entropy(student.float(), target)}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None):
        return sum(self.components(student, teacher, target).values())


class PairLoss(nn.Module):
    """A loss on one (teacher module, student module) pair of intermediate outputs.

    Subclasses set ``kind`` (the name shown in progress and history), ``adapt`` (whether a 1×1 conv / linear
    adapter maps the student's channels to the teacher's) and implement ``forward(student, teacher)``.
    """

    kind = "pair"
    adapt = False

    def __init__(self, teacher_path: str, student_path: str, weight: float = 1.0):
        super().__init__()
        for what, path in (("teacher", teacher_path), ("student", student_path)):
            if not isinstance(path, str) or not path:
                raise ConfigError(f"{type(self).__name__} needs a {what} module path such as 'layer3', got {path!r}")
        if not weight > 0:
            raise ConfigError(f"loss weight must be > 0, got {weight}")
        self.teacher_path, self.student_path, self.weight = teacher_path, student_path, float(weight)

    @property
    def label(self) -> str:
        """``kind(teacher_path→student_path)``: names this term in errors."""
        return f"{self.kind}({self.teacher_path}→{self.student_path})"

    def extra_repr(self) -> str:
        return f"{self.teacher_path!r} -> {self.student_path!r}, weight={self.weight}"


def _same_shape(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ConfigError(f"{what}: student feature {tuple(s.shape)} vs teacher {tuple(t.shape)}; pick modules "
                          "whose outputs match in every dimension but the channels (an adapter maps channels)")


class FeatureLoss(PairLoss):
    """FitNets hint loss between an adapted student feature and the teacher's.

    ``mse``: mean of squared differences over every element. ``cosine``: ``1 − cos`` of the flattened
    per-sample features, averaged over the batch (ignores the feature scale).

    Example:
        >>> loss = FeatureLoss("layer3", "layer2")
        >>> float(loss(torch.ones(2, 4), torch.zeros(2, 4)))
        1.0
    """

    kind = "feature"
    adapt = True

    def __init__(self, teacher_path: str, student_path: str, kind: str = "mse", weight: float = 1.0):
        super().__init__(teacher_path, student_path, weight)
        if kind not in ("mse", "cosine"):
            raise ConfigError(f"feature loss kind must be 'mse' or 'cosine', got {kind!r}")
        self.distance = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _same_shape(student, teacher, self.label)
        s, t = student.float(), teacher.float()
        if self.distance == "cosine":
            return self.weight * (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
        return self.weight * F.mse_loss(s, t)


def attention_map(feature: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko's spatial attention: ``Σ_c |A_c|^p`` per position, flattened and L2-normalised per sample."""
    if feature.dim() < 3:
        raise ConfigError(f"attention transfer needs feature maps [N, C, H, W], got shape {tuple(feature.shape)}; "
                          "hook a conv layer's output")
    q = feature.float().abs().pow(p).sum(1).flatten(1)
    return F.normalize(q, dim=1)


class AttentionTransfer(PairLoss):
    """Attention transfer: ``weight · mean((Q_s − Q_t)²)`` of normalised spatial attention maps.

    Channel counts may differ (the maps sum over channels); spatial sizes must match. The default weight
    500 is Zagoruyko's β/2 with β = 1000, for this element-mean form.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> float(AttentionTransfer("a", "b")(x, torch.cat([x, x], 1))) < 1e-9  # same map up to scale
        True
    """

    kind = "attention"

    def __init__(self, teacher_path: str, student_path: str, p: int = 2, weight: float = 500.0):
        super().__init__(teacher_path, student_path, weight)
        self.p = int(p)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[2:] != teacher.shape[2:] or student.shape[0] != teacher.shape[0]:
            raise ConfigError(f"{self.label}: spatial sizes differ (student {tuple(student.shape)}, teacher "
                              f"{tuple(teacher.shape)}); pick layers at the same resolution")
        return self.weight * (attention_map(student, self.p) - attention_map(teacher, self.p)).pow(2).mean()


class HiddenStateLoss(FeatureLoss):
    """TinyBERT hidden-state loss: ``MSE(H_s·W_h, H_t)``; ``W_h`` is the linear adapter on the last axis.

    Example:
        >>> float(HiddenStateLoss("encoder.layers.3", "encoder.layers.1")(torch.ones(1, 5, 8), torch.ones(1, 5, 8)))
        0.0
    """

    kind = "hidden"

    def __init__(self, teacher_path: str, student_path: str, weight: float = 1.0):
        super().__init__(teacher_path, student_path, "mse", weight)


class AttentionMatrixLoss(PairLoss):
    """TinyBERT attention loss: MSE of attention matrices ``[N, heads, L, L]`` (or ``[N, L, L]``).

    Hook modules that output attention scores or probabilities (a Softmax module, or an
    ``nn.MultiheadAttention`` called with ``need_weights=True``: its second output is used). Entries ≤ −100
    (masked scores) count as 0, as TinyBERT does. With different head counts the heads are averaged first.

    Example:
        >>> a = torch.softmax(torch.randn(1, 2, 3, 3), -1)
        >>> float(AttentionMatrixLoss("t", "s")(a, a))
        0.0
    """

    kind = "attention_matrix"

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = student.float(), teacher.float()
        if s.shape != t.shape and s.dim() == t.dim() == 4 and s.shape[2:] == t.shape[2:]:
            s, t = s.mean(1), t.mean(1)
        _same_shape(s, t, self.label)
        s = torch.where(s <= -100.0, torch.zeros_like(s), s)
        t = torch.where(t <= -100.0, torch.zeros_like(t), t)
        return self.weight * F.mse_loss(s, t)

    @staticmethod
    def pick(out):
        """An MHA module returns ``(output, weights)``: the weights are the attention matrix."""
        if isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], torch.Tensor):
            return out[1]
        return first_tensor(out)


class ValueRelationLoss(PairLoss):
    """MiniLM value relation: ``KL(softmax(V_t·V_tᵀ/√d_t) ‖ softmax(V_s·V_sᵀ/√d_s))`` per head, averaged.

    Hook the value projections (outputs ``[N, L, D]``, split into ``heads`` heads of ``D / heads``). The
    relation matrices are ``[N, heads, L, L]`` whatever ``D`` is, so teacher and student widths may differ.

    Example:
        >>> v = torch.randn(2, 5, 8)
        >>> float(ValueRelationLoss("t", "s", heads=2)(v, v)) < 1e-6
        True
    """

    kind = "value_relation"

    def __init__(self, teacher_path: str, student_path: str, heads: int = 1, weight: float = 1.0):
        super().__init__(teacher_path, student_path, weight)
        if heads < 1:
            raise ConfigError(f"heads must be ≥ 1, got {heads}")
        self.heads = int(heads)

    def _log_relation(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() != 3 or v.shape[-1] % self.heads:
            raise ConfigError(f"{self.label}: value relation needs [N, L, D] with D divisible by heads={self.heads}, "
                              f"got {tuple(v.shape)}")
        n, length, width = v.shape
        v = v.float().reshape(n, length, self.heads, width // self.heads).transpose(1, 2)
        scores = v @ v.transpose(-1, -2) / math.sqrt(width // self.heads)
        return F.log_softmax(scores, dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[:2] != teacher.shape[:2]:
            raise ConfigError(f"{self.label}: batch and sequence length differ (student {tuple(student.shape)}, "
                              f"teacher {tuple(teacher.shape)})")
        log_s, log_t = self._log_relation(student), self._log_relation(teacher)
        return self.weight * (log_t.exp() * (log_t - log_s)).sum(-1).mean()
