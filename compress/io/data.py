"""Calibration / evaluation / training data: one validated in-memory :class:`Dataset` from a spec string.

A data spec is either

* a path to an ``.npz`` file holding an array ``x`` (inputs, ``[N, ...]``, any real dtype; cast to float32 and
  fed to the model as they are — normalise them the way the model was trained) and optionally ``y`` (integer
  class labels ``[N]``), e.g. ``np.savez("calib.npz", x=x, y=y)``; or
* ``MODULE:CALLABLE`` / ``path/to/file.py:CALLABLE`` naming a function that returns an iterable of batches,
  each an array / tensor of inputs or an ``(x, y)`` pair (a ``torch.utils.data.DataLoader`` works as it is).

Everything is validated once, here, so the long steps that follow never meet NaNs, empty sets or a
mismatched label count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError, DataError
from compress.io._callables import SpecError, looks_like_callable_spec, resolve_callable

__all__ = ["Dataset", "check_fits", "load_data"]


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32 ``[N, ...]``, or int64 for integer inputs such as token ids), optional integer labels
    ``y`` (int64 ``[N]``) and where they came from.

    The constructor validates and converts: ``x`` of any real dtype is cast to float32, integral ``y`` to
    int64; empty sets, NaN/inf, fractional or negative labels and length mismatches raise
    :class:`~compress.errors.DataError`.

    Args:
        x: model inputs, first axis is the sample axis.
        y: class labels, one per sample, or ``None``.
        source: a short description used in messages (usually the spec it was loaded from).

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.zeros((10, 1, 8, 8)), np.arange(10) % 2, source="zeros")
        >>> len(ds), ds.x.dtype, ds.take(4).y.tolist()
        (10, dtype('float32'), [0, 1, 0, 1])
    """

    x: np.ndarray
    y: np.ndarray | None = None
    source: str = "<arrays>"

    def __post_init__(self):
        object.__setattr__(self, "x", _as_inputs(self.x, self.source))
        if self.y is not None:
            object.__setattr__(self, "y", _as_labels(self.y, len(self.x), self.source))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch axis."""
        return tuple(self.x.shape[1:])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(x, y)`` tensor batches (``y`` is ``None`` for unlabelled data); the last may be smaller.

        Args:
            batch_size: samples per batch (≥ 1).
            shuffle: visit samples in a random order, reproducible from ``seed``.
            seed: seed of the shuffling order.

        Example:
            >>> import numpy as np
            >>> [tuple(xb.shape) for xb, _ in Dataset(np.zeros((5, 3))).batches(2)]
            [(2, 3), (2, 3), (1, 3)]
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb = torch.from_numpy(np.ascontiguousarray(self.x[idx]))
            yb = None if self.y is None else torch.from_numpy(np.ascontiguousarray(self.y[idx]))
            yield xb, yb

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them when ``n ≥ len(self)``).

        Example:
            >>> import numpy as np
            >>> len(Dataset(np.zeros((5, 3))).take(2))
            2
        """
        if n < 1:
            raise ConfigError(f"take(n) needs n ≥ 1, got {n}")
        if n >= len(self):
            return self
        y = None if self.y is None else self.y[:n]
        return Dataset(self.x[:n], y, source=f"{self.source}[:{n}]")


def _as_inputs(x: Any, source: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"data x from {source} has dtype {x.dtype}; save the inputs as a numeric array (float32)")
    if np.iscomplexobj(x):
        raise DataError(f"data x from {source} is complex; save real-valued inputs (float32)")
    if x.ndim == 0:
        raise DataError(f"data x from {source} is a scalar; save inputs as an array [N, ...] (N samples)")
    if x.shape[0] == 0:
        raise DataError(f"data from {source} is empty (x has shape {_shape(x.shape)}); give at least one sample")
    if np.issubdtype(x.dtype, np.integer):
        # Kept as int64: token ids for embeddings. match_model_dtype() turns them into float32 for models that
        # take real-valued input (e.g. uint8 images for a conv net).
        return np.ascontiguousarray(x, dtype=np.int64)
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x32).all():
        bad = int((~np.isfinite(x32)).reshape(len(x32), -1).any(axis=1).sum())
        first = int(np.flatnonzero(~np.isfinite(x32).reshape(len(x32), -1).all(axis=1))[0])
        overflow = bool(np.isfinite(x).all()) if np.issubdtype(x.dtype, np.floating) else False
        why = "values beyond the float32 range" if overflow else "NaN or inf values"
        raise DataError(
            f"data x from {source} has {why} in {bad} of {len(x32)} samples (first at index {first}); "
            "clean or drop those samples"
        )
    return x32


def _as_labels(y: Any, n: int, source: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? save y.argmax(axis=1))" if y.ndim == 2 else ""
        raise DataError(
            f"labels y from {source} have shape {_shape(y.shape)}; save integer class indices with shape [N]{hint}"
        )
    if len(y) != n:
        raise DataError(f"data from {source} has {n} inputs x but {len(y)} labels y; save one label per sample")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        y64 = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        # Labels stored as float (a common accident) are fine as long as they are whole numbers.
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(
                f"labels y from {source} are not whole numbers; save integer class indices (e.g. y.astype(int))"
            )
        y64 = y.astype(np.int64)
    else:
        raise DataError(f"labels y from {source} have dtype {y.dtype}; save integer class indices")
    if len(y64) and y64.min() < 0:
        raise DataError(f"labels y from {source} contain negative values; class indices must be 0..C-1")
    return y64


def _load_npz(path: Path, spec: str) -> Dataset:
    if path.is_dir():
        raise DataError(f"data path {spec!r} is a directory; pass an .npz file with an array x")
    if not path.exists():
        raise DataError(f"data file {spec!r} not found; check the path (expected an .npz with an array x)")
    not_npz = f"{spec!r} is not an .npz file; save the data with np.savez(path, x=x, y=y)"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {spec!r} ({exc.strerror}); check its permissions") from exc
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{spec!r} is a single .npy array; save inputs as an .npz: np.savez(path, x=x, y=y)")
    if not magic.startswith(b"PK"):  # every .npz is a zip archive
        raise DataError(not_npz)
    try:
        arrays = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{spec!r} holds Python objects, which are not loaded (unsafe); save numeric arrays with np.savez"
            ) from exc
        raise DataError(not_npz) from exc
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError
        raise DataError(f"{spec!r} is corrupt or truncated ({type(exc).__name__}); re-create it with np.savez") from exc
    try:
        with arrays:
            names = list(arrays.files)
            if "x" not in names:
                found = ", ".join(names) or "none"
                raise DataError(f"{spec!r} has no array named x (found: {found}); save it as np.savez(path, x=..., y=...)")
            x = arrays["x"]
            y = arrays["y"] if "y" in names else None
    except DataError:
        raise
    except ValueError as exc:  # an object array inside the archive
        raise DataError(
            f"{spec!r} holds Python objects, which are not loaded (unsafe); save numeric arrays with np.savez"
        ) from exc
    except Exception as exc:  # zipfile.BadZipFile, truncated members, ...
        raise DataError(f"{spec!r} is corrupt ({type(exc).__name__}); re-create it with np.savez") from exc
    return Dataset(x, y, source=path.name)


def _to_numpy(part: Any, what: str, spec: str) -> np.ndarray:
    if isinstance(part, torch.Tensor):
        return part.detach().cpu().numpy()
    try:
        return np.asarray(part)
    except Exception as exc:
        raise DataError(f"loader {spec} yielded a {what} of type {type(part).__name__}; yield arrays or tensors") from exc


def _from_batches(batches: Iterable[Any], spec: str) -> Dataset:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    labelled: bool | None = None
    for i, batch in enumerate(batches):
        if isinstance(batch, dict):
            if "x" not in batch:
                raise DataError(f"loader {spec} yielded a dict without key 'x' (batch {i}); yield x or (x, y)")
            batch = (batch["x"], batch["y"]) if "y" in batch else batch["x"]
        if isinstance(batch, (tuple, list)):
            if len(batch) == 1:
                x, y = batch[0], None
            elif len(batch) == 2:
                x, y = batch
            else:
                raise DataError(f"loader {spec} yielded a batch of {len(batch)} items (batch {i}); yield x or (x, y)")
        else:
            x, y = batch, None
        if labelled is None:
            labelled = y is not None
        elif labelled != (y is not None):
            raise DataError(f"loader {spec} yielded batches with and without labels (batch {i}); yield the same kind")
        xa = _to_numpy(x, "batch", spec)
        if xa.ndim == 0:
            raise DataError(f"loader {spec} yielded a scalar as batch {i}; yield arrays [B, ...] with a batch axis")
        if xs and xa.shape[1:] != xs[0].shape[1:]:
            raise DataError(
                f"loader {spec}: batch {i} has samples of shape {_shape(xa.shape[1:])}, batch 0 "
                f"{_shape(xs[0].shape[1:])}; yield samples of one shape"
            )
        xs.append(xa)
        if y is not None:
            ya = _to_numpy(y, "label batch", spec).reshape(-1)
            if len(ya) != len(xa):
                raise DataError(
                    f"loader {spec}: batch {i} has {len(xa)} inputs but {len(ya)} labels; yield one label per sample"
                )
            ys.append(ya)
    if not xs:
        raise DataError(f"loader {spec} yielded no batches (empty data); make it yield at least one sample")
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = (np.concatenate(ys) if len(ys) > 1 else ys[0]) if labelled else None
    return Dataset(x, y, source=spec)


def _load_callable(spec: str) -> Dataset:
    try:
        fn, kwargs = resolve_callable(spec)
    except SpecError as exc:
        raise DataError(f"data loader {spec}: {exc}") from exc
    except Exception as exc:
        raise DataError(
            f"importing the data loader {spec} failed: {type(exc).__name__}: {exc}; fix the module (rerun with --debug)"
        ) from exc
    try:
        result = fn(**kwargs)
        if isinstance(result, Dataset):
            return result
        if isinstance(result, (np.ndarray, torch.Tensor)):
            result = [result]  # one array is one batch
        if not isinstance(result, Iterable):
            raise DataError(
                f"data loader {spec} returned a {type(result).__name__}; return an iterable of batches x or (x, y)"
            )
        return _from_batches(result, spec)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"data loader {spec} raised {type(exc).__name__}: {exc}; fix the loader (rerun with --debug)"
        ) from exc


def load_data(spec: str | Path) -> Dataset:
    """Load and validate a data spec: an ``.npz`` path (array ``x``, optional ``y``) or ``MODULE:CALLABLE``.

    Args:
        spec: ``calib.npz``, ``mypkg.data:calib_batches`` or ``path/to/loader.py:batches``.

    Returns:
        A :class:`Dataset` (float32 ``x``, int64 ``y`` or ``None``).

    Raises:
        DataError: missing or unreadable file, no ``x`` array, empty data, NaN/inf, bad labels, loader failure.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "calib.npz")
        >>> np.savez(path, x=np.random.rand(8, 1, 8, 8), y=np.arange(8))
        >>> load_data(path).x.shape
        (8, 1, 8, 8)
    """
    text = str(spec)
    if not text.strip():
        raise DataError("empty data spec; pass an .npz path or MODULE:CALLABLE")
    path = Path(text)
    if isinstance(spec, Path) or path.exists() or path.suffix.lower() in (".npz", ".npy"):
        return _load_npz(path, text)
    if looks_like_callable_spec(text):
        return _load_callable(text)
    raise DataError(f"data file {text!r} not found; pass an .npz path (x[, y]) or MODULE:CALLABLE returning batches")


def _first_layer_hint(model: nn.Module) -> str:
    """What the first weight layer wants, e.g. 'its first layer stem.0 (Conv2d) takes [N, 1, H, W]'."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spatial = {1: "L", 2: "H, W", 3: "D, H, W"}[m.weight.dim() - 2]
            return f"its first layer {name} ({type(m).__name__}) takes [N, {m.in_channels}, {spatial}]"
        if isinstance(m, nn.Linear):
            return f"its first layer {name} (Linear) takes [N, ..., {m.in_features}]"
        if isinstance(m, nn.Embedding):
            return f"its first layer {name} (Embedding) takes integer indices [N, ...]"
    return "check the input shape the model was trained with"


def match_model_dtype(model: nn.Module, dataset: Dataset) -> Dataset:
    """Integer inputs stay integer when the model takes them (token ids), else become float32 (images).

    Example:
        >>> import numpy as np
        >>> match_model_dtype(nn.Linear(3, 2), Dataset(np.zeros((4, 3), np.uint8))).x.dtype
        dtype('float32')
        >>> match_model_dtype(nn.Embedding(5, 2), Dataset(np.zeros((4, 3), np.uint8))).x.dtype
        dtype('int64')
    """
    if not np.issubdtype(dataset.x.dtype, np.integer):
        return dataset
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.from_numpy(dataset.x[:1]))
        return dataset
    except Exception:  # the model rejects integer input: it wants real values
        return Dataset(dataset.x.astype(np.float32), dataset.y, source=dataset.source)
    finally:
        model.train(was_training)


def check_fits(model: nn.Module, dataset: Dataset, *, max_samples: int = 2) -> torch.Tensor:
    """Run a couple of samples through ``model`` and turn a shape error into a one-line :class:`DataError`.

    Called before calibration / training so a wrong data file fails in a second, not after minutes.
    The model's train/eval mode and parameters are left as they were.

    Args:
        model: the float model.
        dataset: data to be fed to it.
        max_samples: how many samples to try.

    Returns:
        The model's output on those samples.

    Example:
        >>> import numpy as np
        >>> check_fits(nn.Linear(3, 2), Dataset(np.zeros((4, 3)))).shape
        torch.Size([2, 2])
    """
    xb, _ = next(dataset.batches(max(1, min(max_samples, len(dataset)))))
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point():
        xb = xb.to(device=param.device, dtype=param.dtype if xb.is_floating_point() else xb.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(xb)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Guard failed" in detail:  # a torch.export program traced with static shapes
            raise DataError(
                f"data x from {dataset.source} has shape {_shape(dataset.x.shape)} but the exported model only "
                f"accepts other shapes ({detail[:120]}); re-export it with a dynamic batch dimension: "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)"
            ) from exc
        raise DataError(
            f"data x from {dataset.source} has shape {_shape(dataset.x.shape)} but the model rejects it "
            f"({detail[:200]}); {_first_layer_hint(model)}. Reshape the data to match"
        ) from exc
    finally:
        model.train(was_training)
    return out
