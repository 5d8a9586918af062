"""The task metric mixed precision keeps within budget: one number, higher is better, on a 0..1 scale.

Built in (``--metric NAME``; the default is picked from the data and the model's output):

* ``accuracy`` — top-1 accuracy against the labels ``y`` (the default when the evaluation set has labels and
  the output is ``[N, classes]``);
* ``agreement`` — top-1 agreement with the fp32 model's prediction (the default for an unlabelled ``[N, C]``
  output, C > 1: what the pipeline calls a classifier);
* ``cosine`` — mean per-sample cosine similarity with the fp32 output (the default otherwise: embeddings,
  regressions, sequences, feature maps).

A custom metric is ``MODULE:CALLABLE`` (the spec syntax of ``--arch`` and data loaders) with the signature
``(outputs, batch) -> float``: ``outputs`` is the model's first output on every evaluated sample (a numpy array),
``batch`` the :class:`compress.io.Dataset` of those samples (``batch.inputs`` by name, ``batch.y`` the labels or
None). It is called once on the whole set, so metrics that do not average over samples (IoU, F1) work. Drops
are reported in percentage points of the metric, i.e. ``100 × (fp32 − int8)``: a custom metric should be a
fraction (0..1) for ``--max-drop`` to read as points.

Example:
    >>> import numpy as np
    >>> from compress.io import Dataset
    >>> ref = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> int8 = np.array([[1.5, 0.1], [0.2, 0.1], [1.0, 0.0]])
    >>> m = resolve_metric(None, Dataset(np.zeros((3, 4)), None), ref)
    >>> m.name, round(m.score(int8, ref, Dataset(np.zeros((3, 4)), None)), 3)
    ('agreement', 0.667)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from compress.errors import ConfigError, DataError


class MetricKind(str, Enum):
    ACCURACY = "accuracy"
    AGREEMENT = "agreement"
    COSINE = "cosine"
    CUSTOM = "custom"


@dataclass(frozen=True)
class Metric:
    """A task metric: :meth:`score` ``(outputs, fp32 outputs, batch) -> float`` (higher is better).

    Args:
        kind: which built-in metric, or ``CUSTOM``.
        fn: the user's ``(outputs, batch) -> float`` for ``CUSTOM``.
        spec: what the user wrote (``--metric``), for the report.
    """

    kind: MetricKind
    fn: Callable | None = None
    spec: str | None = None

    @property
    def name(self) -> str:
        return self.spec if self.kind is MetricKind.CUSTOM else self.kind.value

    def score(self, outputs: np.ndarray, reference: np.ndarray, batch) -> float:
        """The metric of ``outputs`` (``reference``: the fp32 outputs on the same samples; ``batch``: the Dataset)."""
        if self.kind is MetricKind.ACCURACY:
            return float(np.mean(outputs.argmax(-1) == batch.y))
        if self.kind is MetricKind.AGREEMENT:
            return float(np.mean(outputs.argmax(-1) == reference.argmax(-1)))
        if self.kind is MetricKind.COSINE:
            return cosine(outputs, reference)
        try:
            value = self.fn(outputs, batch)
            value = float(value)
        except Exception as exc:
            raise DataError(f"metric {self.spec} raised {type(exc).__name__}: {exc}; it is called as "
                            "fn(outputs: np.ndarray, batch: compress.io.Dataset) -> float (rerun with --debug)"
                            ) from exc
        if not np.isfinite(value):
            raise DataError(f"metric {self.spec} returned {value}; return a finite float (higher is better)")
        return value

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind.value}


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of each flattened output with its reference.

    Two all-zero samples count as identical (1.0): a ReLU output that both models leave at zero agrees.

    Example:
        >>> round(cosine(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 1.0], [0.0, 1.0]])), 4)
        0.8536
    """
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
    return float(np.mean(np.where(both_zero, 1.0, cos)))


BUILTIN = tuple(k.value for k in MetricKind if k is not MetricKind.CUSTOM)


def resolve_metric(spec: str | Metric | None, batch, reference: np.ndarray) -> Metric:
    """The :class:`Metric` for ``spec`` (a built-in name, ``MODULE:CALLABLE``, or None: chosen from the data).

    Args:
        spec: ``None`` (accuracy with labels, else agreement for ``[N, C]`` outputs, else cosine), a name in
            :data:`BUILTIN`, ``MODULE:CALLABLE`` or a ready :class:`Metric`.
        batch: the evaluation Dataset (its labels decide the default).
        reference: the fp32 model's outputs on ``batch`` (their shape decides the default).

    Raises:
        ConfigError: an unknown name, a spec that does not resolve, or accuracy without usable labels.
    """
    if isinstance(spec, Metric):
        return spec
    classifier = reference.ndim == 2 and reference.shape[1] > 1
    labelled = batch.y is not None and classifier
    if spec is None:
        kind = MetricKind.ACCURACY if labelled else MetricKind.AGREEMENT if classifier else MetricKind.COSINE
        return Metric(kind)
    if spec in BUILTIN:
        kind = MetricKind(spec)
        if kind is MetricKind.ACCURACY and not labelled:
            raise ConfigError("--metric accuracy needs labels y in --eval and [N, classes] outputs; pass --eval with "
                              "y, or --metric agreement / cosine")
        if kind is MetricKind.AGREEMENT and not classifier:
            raise ConfigError(f"--metric agreement needs [N, classes] outputs, the model gives "
                              f"{list(reference.shape)}; use --metric cosine")
        return Metric(kind)
    return Metric(MetricKind.CUSTOM, load_metric_callable(spec), spec)


def load_metric_callable(spec: str) -> Callable:
    """Import the ``MODULE:CALLABLE`` of ``--metric``; a bad spec is one :class:`ConfigError` line."""
    from compress.io._callables import SpecError, looks_like_callable_spec, resolve_callable

    if not looks_like_callable_spec(spec):
        raise ConfigError(f"unknown metric {spec!r}; use one of {', '.join(BUILTIN)} or MODULE:CALLABLE "
                          "(e.g. mymetrics.py:f1, called as f1(outputs, batch) -> float)")
    try:
        fn, kwargs = resolve_callable(spec)
    except SpecError as exc:
        raise ConfigError(f"--metric {spec}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"importing the metric {spec} failed: {type(exc).__name__}: {exc}; fix the module "
                          "(rerun with --debug)") from exc
    if kwargs:
        return lambda outputs, batch: fn(outputs, batch, **kwargs)
    return fn
