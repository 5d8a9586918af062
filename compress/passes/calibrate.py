"""calibrate(): run representative data through a prepared model so every activation quantizer sees a range."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from compress.errors import DataError
from compress.quant.fake import Quantizer, QuantState


def iter_inputs(data, batch_size: int = 32) -> Iterator[tuple[torch.Tensor, ...]]:
    """Model inputs from what users have: a Dataset (``.batches()``), tensors, arrays or (x, y) tuples.

    A tuple/list batch is taken as ``(inputs, labels)``: its first element is the model input — a tensor, or
    a tuple/list of tensors for a model with several inputs (``((a, b), y)`` or ``((a, b),)``).
    """
    source: Iterable = data.batches(batch_size) if hasattr(data, "batches") else data
    for batch in source:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        inputs = tuple(x) if isinstance(x, tuple | list) else (x,)
        converted = []
        for t in inputs:
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(t)
            if not isinstance(t, torch.Tensor):
                raise DataError(
                    f"a calibration batch holds a {type(t).__name__}; yield tensors, arrays, (x, y) tuples, or "
                    "((x1, x2), y) for models with several inputs"
                )
            converted.append(t)
        yield tuple(converted)


def _progress(total: int | None, description: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        transient=True, disable=not enabled)
    task = progress.add_task(description, total=total)
    return progress, task


def calibrate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 32,
    max_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Observe activation ranges on ``data``, then switch every quantizer to quantizing.

    Args:
        model: a model from :func:`compress.passes.prepare`.
        data: a :class:`compress.io.Dataset`, or any iterable of input tensors / arrays / ``(x, y)`` tuples.
        batch_size: batch size when ``data`` is a Dataset.
        max_batches: stop after this many batches.
        progress: show a progress bar.

    Returns:
        ``model`` (calibrated in place), in eval mode.

    Example:
        >>> from compress.models import DemoCNN
        >>> from compress.passes import prepare
        >>> m = prepare(DemoCNN(), torch.randn(1, 1, 8, 8))
        >>> m = calibrate(m, [torch.randn(4, 1, 8, 8)], progress=False)
    """
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer) and not q.from_tensor]
    for q in quantizers:
        if q.state is QuantState.FROZEN:
            raise DataError("this model is already converted; calibrate the prepared model before convert()")
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = len(data) // batch_size + bool(len(data) % batch_size) if hasattr(data, "batches") else None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    seen = 0
    bar, task = _progress(total, "calibrating", progress)
    with bar, torch.no_grad():
        for inputs in iter_inputs(data, batch_size):
            if max_batches is not None and seen >= max_batches:
                break
            if inputs[0].numel() == 0:
                continue
            model(*(x.to(device) for x in inputs))
            seen += 1
            bar.advance(task)
    if seen == 0:
        raise DataError("the calibration set is empty; pass at least one batch of representative inputs")
    for q in quantizers:
        q.start_quantizing()
    return model
