"""Calibration / evaluation / training data: one validated in-memory :class:`Dataset` from a spec string.

A data spec is either

* a path to an ``.npz`` file holding the inputs and optionally ``y`` (integer class labels ``[N]``): one array
  ``x`` (``[N, ...]``, any real dtype; cast to float32 and fed to the model as it is — normalise it the way
  the model was trained), e.g. ``np.savez("calib.npz", x=x, y=y)``; or, for a model with several inputs, one
  array per ``forward`` parameter, named after it (``input_ids=..., attention_mask=...``) or ``x0, x1, ...``
  in order; or
* ``MODULE:CALLABLE`` / ``path/to/file.py:CALLABLE`` naming a function that returns an iterable of batches,
  each an array / tensor of inputs, an ``(x, y)`` pair, ``((a, b), y)`` for several inputs, or a dict
  ``{"input_ids": ..., "attention_mask": ..., "y": ...}`` (a ``torch.utils.data.DataLoader`` works as it is).

Everything is validated once, here, so the long steps that follow never meet NaNs, empty sets or a
mismatched label count; :mod:`compress.io.fit` binds named inputs to ``forward``'s parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from compress.errors import ConfigError, DataError
from compress.io._callables import SpecError, looks_like_callable_spec, resolve_callable

__all__ = ["Dataset", "load_data"]


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


class Dataset:
    """Model inputs (one array, or several named ones), optional integer labels ``y`` and where they came from.

    ``x`` is one array ``[N, ...]`` (a model with one input), a mapping ``{name: array}`` (several inputs,
    named after ``forward``'s parameters, e.g. ``input_ids`` and ``attention_mask``), or a tuple of arrays
    (named ``x0, x1, ...``, bound by position). Each input of a real dtype is cast to float32; integer inputs
    stay int64 (token ids; :func:`match_model_dtype` makes them float32 for models that take real values).
    Integral ``y`` becomes int64. Empty sets, NaN/inf, inputs with different sample counts, fractional or
    negative labels and length mismatches raise :class:`~compress.errors.DataError`. Immutable.

    ``.x`` is the array of a one-input set; on a set with several inputs it raises :class:`DataError` (which
    one would be ambiguous): use ``.inputs[name]``, ``.arrays`` or ``.example()``.

    Args:
        x: model inputs, first axis is the sample axis.
        y: class labels, one per sample, or ``None``.
        source: a short description used in messages (usually the spec it was loaded from).

    Example:
        >>> import numpy as np
        >>> ds = Dataset(np.zeros((10, 1, 8, 8)), np.arange(10) % 2, source="zeros")
        >>> len(ds), ds.x.dtype, ds.names, ds.take(4).y.tolist()
        (10, dtype('float32'), ('x',), [0, 1, 0, 1])
        >>> two = Dataset({"input_ids": np.ones((4, 6), np.int64), "attention_mask": np.ones((4, 6))})
        >>> two.names, [tuple(t.shape) for t in two.example()]
        (('input_ids', 'attention_mask'), [(1, 6), (1, 6)])
    """

    __slots__ = ("_inputs", "y", "source")

    def __init__(self, x: Any, y: Any = None, source: str = "<arrays>"):
        raw = _named(x, source)
        inputs = {name: _as_inputs(a, source, name) for name, a in raw.items()}
        counts = {name: int(a.shape[0]) for name, a in inputs.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name} {n}" for name, n in counts.items())
            raise DataError(f"inputs from {source} have different sample counts ({listed}); give every input "
                            "one row per sample")
        n = next(iter(counts.values()))
        what = "inputs x" if list(inputs) == ["x"] else "samples"
        labels = None if y is None else _as_labels(y, n, source, what)
        object.__setattr__(self, "_inputs", inputs)
        object.__setattr__(self, "y", labels)
        object.__setattr__(self, "source", source)

    def __setattr__(self, name, value):
        raise AttributeError(f"Dataset is immutable; build a new one instead of setting {name!r}")

    def __reduce__(self):  # pickling / deepcopy (the immutable __setattr__ would refuse the default path)
        return (Dataset._trusted, (dict(self._inputs), self.y, self.source))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={_shape(a.shape)} {a.dtype}" for k, a in self._inputs.items())
        return f"Dataset({shapes}, y={'None' if self.y is None else len(self.y)}, source={self.source!r})"

    @classmethod
    def _trusted(cls, inputs: dict[str, np.ndarray], y: np.ndarray | None, source: str) -> Dataset:
        """A Dataset of already validated arrays (subsets, reorderings, dtype changes): no second scan."""
        ds = object.__new__(cls)
        object.__setattr__(ds, "_inputs", dict(inputs))
        object.__setattr__(ds, "y", y)
        object.__setattr__(ds, "source", source)
        return ds

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs' names, in the order the model is fed (``("x",)`` for one unnamed array)."""
        return tuple(self._inputs)

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        """``{name: array}`` (read-only), in feeding order."""
        return MappingProxyType(self._inputs)

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The input arrays in feeding order."""
        return tuple(self._inputs.values())

    @property
    def x(self) -> np.ndarray:
        """The input array of a one-input set (several inputs: :class:`DataError`; use ``inputs``)."""
        if len(self._inputs) != 1:
            raise DataError(f"data from {self.source} has {len(self._inputs)} inputs ({', '.join(self._inputs)}); "
                            "read them with .inputs[name] or .arrays (.x is for one input)")
        return next(iter(self._inputs.values()))

    def __len__(self) -> int:
        return int(next(iter(self._inputs.values())).shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch axis (one-input sets; see :attr:`sample_shapes`)."""
        return tuple(self.x.shape[1:])

    @property
    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape of one sample}`` for every input."""
        return {name: tuple(a.shape[1:]) for name, a in self._inputs.items()}

    def _tensors(self, idx) -> torch.Tensor | tuple[torch.Tensor, ...]:
        ts = tuple(torch.from_numpy(np.ascontiguousarray(a[idx])) for a in self._inputs.values())
        return ts[0] if len(ts) == 1 else ts

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor | None]]:
        """Yield ``(x, y)`` batches: ``x`` a tensor (one input) or a tuple of tensors in feeding order
        (several), ``y`` ``None`` for unlabelled data; the last batch may be smaller.

        Args:
            batch_size: samples per batch (≥ 1).
            shuffle: visit samples in a random order, reproducible from ``seed``.
            seed: seed of the shuffling order.

        Example:
            >>> import numpy as np
            >>> [tuple(xb.shape) for xb, _ in Dataset(np.zeros((5, 3))).batches(2)]
            [(2, 3), (2, 3), (1, 3)]
            >>> [len(xb) for xb, _ in Dataset((np.zeros((5, 3)), np.zeros((5, 2)))).batches(8)]
            [2]
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {batch_size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yb = None if self.y is None else torch.from_numpy(np.ascontiguousarray(self.y[idx]))
            yield self._tensors(idx), yb

    def example(self, n: int = 1) -> tuple[torch.Tensor, ...]:
        """The first ``n`` samples as a tuple of tensors, one per input: ``model(*ds.example())`` runs.

        Example:
            >>> import numpy as np
            >>> [tuple(t.shape) for t in Dataset(np.zeros((5, 3))).example(2)]
            [(2, 3)]
        """
        if n < 1:
            raise ConfigError(f"example(n) needs n ≥ 1, got {n}")
        return tuple(torch.from_numpy(np.ascontiguousarray(a[:n])) for a in self._inputs.values())

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
        return Dataset._trusted({k: a[:n] for k, a in self._inputs.items()}, y, f"{self.source}[:{n}]")


def _named(x: Any, source: str) -> dict[str, Any]:
    """``x`` as ``{name: array-like}``: one array is ``x``, a tuple of arrays ``x0, x1, ...``."""
    if isinstance(x, Mapping):
        if not x:
            raise DataError(f"data from {source} has no inputs; give at least one array")
        bad = [k for k in x if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise DataError(f"data from {source} has input names {bad!r}; name inputs after forward's parameters")
        if "y" in x:
            raise DataError(f"data from {source} lists y among the inputs; pass labels as y=..., not as an input")
        return dict(x)
    if isinstance(x, tuple) and x and all(isinstance(a, np.ndarray | torch.Tensor) for a in x):
        return {"x": x[0]} if len(x) == 1 else {f"x{i}": a for i, a in enumerate(x)}
    return {"x": x}


def _as_inputs(x: Any, source: str, name: str = "x") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"data {name} from {source} has dtype {x.dtype}; save the inputs as a numeric array (float32)")
    if np.iscomplexobj(x):
        raise DataError(f"data {name} from {source} is complex; save real-valued inputs (float32)")
    if x.ndim == 0:
        raise DataError(f"data {name} from {source} is a scalar; save inputs as an array [N, ...] (N samples)")
    if x.shape[0] == 0:
        raise DataError(f"data from {source} is empty ({name} has shape {_shape(x.shape)}); give at least one sample")
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
            f"data {name} from {source} has {why} in {bad} of {len(x32)} samples (first at index {first}); "
            "clean or drop those samples"
        )
    return x32


def _as_labels(y: Any, n: int, source: str, what: str = "inputs x") -> np.ndarray:
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
        raise DataError(f"data from {source} has {n} {what} but {len(y)} labels y; save one label per sample")
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
            names = [n for n in arrays.files if n != "y"]  # every array but the labels is a model input
            if not names:
                found = ", ".join(arrays.files) or "none"
                raise DataError(f"{spec!r} has no input arrays (found: {found}); save the inputs as x, or named "
                                "after forward's parameters: np.savez(path, x=..., y=...)")
            bad = [n for n in names if not n.isidentifier()]
            if bad:
                raise DataError(f"{spec!r} has arrays named {', '.join(bad)}; name the inputs x, or after "
                                "forward's parameters (input_ids, attention_mask, ...), or x0, x1, ...")
            x = {n: arrays[n] for n in names} if len(names) > 1 or names != ["x"] else arrays["x"]
            y = arrays["y"] if "y" in arrays.files else None
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


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray | torch.Tensor)


def _split_batch(batch: Any, i: int, spec: str) -> tuple[dict[str, Any], Any]:
    """One loader batch → ``({input name: array}, labels or None)``.

    Accepted: ``x``; ``(x,)`` / ``(x, y)``; ``((a, b), y)`` / ``([a, b], y)`` (inputs ``x0, x1``, what a
    DataLoader collates from ``((a, b), y)`` samples); ``({"input_ids": .., ...}, y)``; and dicts
    ``{"input_ids": .., "attention_mask": .., "y" or "labels": ..}`` (what a HuggingFace collator yields).
    """
    if isinstance(batch, Mapping):
        label_keys = [k for k in ("y", "labels") if k in batch]
        if len(label_keys) > 1:
            raise DataError(f"loader {spec} yielded a dict with both y and labels (batch {i}); keep one")
        y = batch[label_keys[0]] if label_keys else None
        inputs = {k: v for k, v in batch.items() if k not in ("y", "labels")}
        if not inputs:
            raise DataError(f"loader {spec} yielded a dict with no inputs (batch {i}); yield "
                            "{'x': ..., 'y': ...} or arrays named after forward's parameters")
        return inputs, y
    if isinstance(batch, tuple | list) and not _is_array(batch):
        if len(batch) == 1:
            x, y = batch[0], None
        elif len(batch) == 2:
            x, y = batch
        else:
            raise DataError(f"loader {spec} yielded a batch of {len(batch)} items (batch {i}); yield x, (x, y) "
                            "or ((x1, x2), y) for several inputs")
    else:
        x, y = batch, None
    if isinstance(x, Mapping):
        return dict(x), y
    if isinstance(x, tuple | list) and x and all(_is_array(v) for v in x):
        return ({"x": x[0]} if len(x) == 1 else {f"x{j}": v for j, v in enumerate(x)}), y
    return {"x": x}, y


def _from_batches(batches: Iterable[Any], spec: str) -> Dataset:
    parts: dict[str, list[np.ndarray]] = {}
    ys: list[np.ndarray] = []
    labelled: bool | None = None
    for i, batch in enumerate(batches):
        inputs, y = _split_batch(batch, i, spec)
        if labelled is None:
            labelled = y is not None
        elif labelled != (y is not None):
            raise DataError(f"loader {spec} yielded batches with and without labels (batch {i}); yield the same kind")
        if parts and list(inputs) != list(parts):
            raise DataError(f"loader {spec}: batch {i} has inputs {', '.join(inputs)}, batch 0 "
                            f"{', '.join(parts)}; yield the same inputs in every batch")
        n = None
        for name, value in inputs.items():
            xa = _to_numpy(value, "batch", spec)
            what = "" if name == "x" else f"{name} "
            if xa.ndim == 0:
                raise DataError(f"loader {spec} yielded a scalar {what}as batch {i}; yield arrays [B, ...] with a "
                                "batch axis")
            first = parts.setdefault(name, [])
            if first and xa.shape[1:] != first[0].shape[1:]:
                raise DataError(
                    f"loader {spec}: batch {i} has {what}samples of shape {_shape(xa.shape[1:])}, batch 0 "
                    f"{_shape(first[0].shape[1:])}; yield samples of one shape"
                )
            if n is not None and len(xa) != n:
                raise DataError(f"loader {spec}: batch {i} has inputs with different batch sizes "
                                f"({name} {len(xa)} vs {n}); yield one row per sample in every input")
            n = len(xa)
            first.append(xa)
        if y is not None:
            ya = _to_numpy(y, "label batch", spec).reshape(-1)
            if len(ya) != n:
                raise DataError(
                    f"loader {spec}: batch {i} has {n} inputs but {len(ya)} labels; yield one label per sample"
                )
            ys.append(ya)
    if not parts:
        raise DataError(f"loader {spec} yielded no batches (empty data); make it yield at least one sample")
    arrays = {name: np.concatenate(xs) if len(xs) > 1 else xs[0] for name, xs in parts.items()}
    y = (np.concatenate(ys) if len(ys) > 1 else ys[0]) if labelled else None
    return Dataset(arrays["x"] if list(arrays) == ["x"] else arrays, y, source=spec)


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
    """Load and validate a data spec: an ``.npz`` path (array ``x`` or several named inputs, optional ``y``) or
    ``MODULE:CALLABLE``.

    Args:
        spec: ``calib.npz``, ``mypkg.data:calib_batches`` or ``path/to/loader.py:batches``.

    Returns:
        A :class:`Dataset` (float32 or int64 inputs, int64 ``y`` or ``None``).

    Raises:
        DataError: missing or unreadable file, no input array, empty data, NaN/inf, inputs of different
            lengths, bad labels, loader failure.

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


def __getattr__(name: str):
    # bind_inputs / match_model_dtype / check_fits live in compress.io.fit (they need the model); this keeps
    # `from compress.io.data import match_model_dtype` working for callers written before the move.
    if name in ("bind_inputs", "match_model_dtype", "check_fits"):
        from compress.io import fit

        return getattr(fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
