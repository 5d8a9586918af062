"""Fitting data to a model: inputs bound to ``forward``'s parameters, dtypes the model takes, a shape check.

Called before calibration / training / export, so a wrong data file fails in a second, not after minutes.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from compress.errors import DataError
from compress.io.bind import forward_params, order_inputs
from compress.io.data import Dataset, _shape

__all__ = ["bind_inputs", "check_fits", "match_model_dtype"]


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


def bind_inputs(model: nn.Module, dataset: Dataset) -> Dataset:
    """Put the inputs in the order of ``model.forward``'s parameters (named arrays), or by position (``x0, x1``).

    A one-input set is returned as it is, whatever its array is called.

    Raises:
        DataError: a name ``forward`` does not take, a parameter without data, or too many inputs (one line
            naming the parameters expected and the names found).

    Example:
        >>> import numpy as np
        >>> ds = Dataset({"input2": np.zeros((4, 3)), "input1": np.zeros((4, 2))})
        >>> bind_inputs(nn.Bilinear(2, 3, 1), ds).names
        ('input1', 'input2')
    """
    order = order_inputs(forward_params(model), dataset.names, dataset.source)
    if list(order) == list(dataset.names):
        return dataset
    return Dataset._trusted({k: dataset.inputs[k] for k in order}, dataset.y, dataset.source)


def _runs(model: nn.Module, arrays: tuple[np.ndarray, ...]) -> bool:
    try:
        with torch.no_grad():
            model(*(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in arrays))
        return True
    except Exception:  # the model rejects these dtypes (or this sample): try the next combination
        return False


def match_model_dtype(model: nn.Module, dataset: Dataset) -> Dataset:
    """Bind the inputs to ``forward``'s parameters (:func:`bind_inputs`), then keep each integer input integer
    when the model takes it (token ids, masks) and make it float32 otherwise (uint8 images).

    With several integer inputs, the fewest conversions to float32 that let the model run one sample win.

    Example:
        >>> import numpy as np
        >>> match_model_dtype(nn.Linear(3, 2), Dataset(np.zeros((4, 3), np.uint8))).x.dtype
        dtype('float32')
        >>> match_model_dtype(nn.Embedding(5, 2), Dataset(np.zeros((4, 3), np.uint8))).x.dtype
        dtype('int64')
    """
    dataset = bind_inputs(model, dataset)
    ints = [k for k, a in dataset.inputs.items() if np.issubdtype(a.dtype, np.integer)]
    if not ints:
        return dataset
    # Every subset of the integer inputs, fewest conversions first (≤ 16 one-sample runs for 4 integer inputs).
    subsets = ([c for r in range(len(ints) + 1) for c in itertools.combinations(ints, r)] if len(ints) <= 4
               else [(), tuple(ints)])
    was_training = model.training
    model.eval()
    try:
        for convert in subsets:
            arrays = tuple(a.astype(np.float32) if k in convert else a for k, a in dataset.inputs.items())
            if _runs(model, arrays):
                break
        else:  # nothing runs: real values (the old single-input rule); check_fits names the shape problem
            convert = tuple(ints)
    finally:
        model.train(was_training)
    if not convert:
        return dataset
    inputs = {k: a.astype(np.float32) if k in convert else a for k, a in dataset.inputs.items()}
    return Dataset._trusted(inputs, dataset.y, dataset.source)


def _describe_inputs(dataset: Dataset) -> str:
    if dataset.names == ("x",):
        return f"data x from {dataset.source} has shape {_shape(dataset.x.shape)}"
    shapes = ", ".join(f"{k} {_shape(a.shape)} {a.dtype}" for k, a in dataset.inputs.items())
    return f"data from {dataset.source} with inputs {shapes}"


def check_fits(model: nn.Module, dataset: Dataset, *, max_samples: int = 2) -> torch.Tensor:
    """Run a couple of samples through ``model`` and turn a shape error into a one-line :class:`DataError`.

    Called before calibration / training so a wrong data file fails in a second, not after minutes.
    The model's train/eval mode and parameters are left as they were. Several inputs are fed in the
    dataset's order (bind them first with :func:`match_model_dtype`).

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
    inputs = dataset.example(max(1, min(max_samples, len(dataset))))
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point():
        inputs = tuple(t.to(device=param.device, dtype=param.dtype if t.is_floating_point() else t.dtype)
                       for t in inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*inputs)
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Guard failed" in detail:  # a torch.export program traced with static shapes
            raise DataError(
                f"{_describe_inputs(dataset)} but the exported model only accepts other shapes ({detail[:120]}); "
                "re-export it with a dynamic batch dimension: dynamic_shapes=({0: torch.export.Dim('batch')},)"
            ) from exc
        hint = _first_layer_hint(model) if len(inputs) == 1 else "check each input's shape and dtype"
        raise DataError(
            f"{_describe_inputs(dataset)} but the model rejects it ({detail[:200]}); {hint}. Reshape the data "
            "to match"
        ) from exc
    finally:
        model.train(was_training)
    return out
