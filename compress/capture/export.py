"""capture(): any ``nn.Module`` → one module-level fx graph, through ``torch.export`` and the raiser.

``torch.export`` runs the user's ``forward`` on fake tensors, so shape checks, buffer slices
(``self.position_ids[:, :L]``), Conv subclasses with their own ``forward`` and functional code all arrive as
the same aten graph, which :func:`~compress.capture.raiser.raise_exported_program` lifts back to the
vocabulary the passes read. The batch dimension (dim 0 of every tensor input) is exported dynamic, so the graph
runs at calibration, evaluation and deployment batch sizes alike.
"""

from __future__ import annotations

import inspect
import logging
import re
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import fx, nn

from compress.capture._rnn_op import opaque_recurrent_ops
from compress.capture.raiser import raise_exported_program
from compress.errors import CaptureError

__all__ = ["capture"]

_TORCH_DIR = str(Path(torch.__file__).parent)
_COMPRESS_DIR = str(Path(__file__).parents[1])
_STDLIB_DIR = str(Path(logging.__file__).parents[1])
# torch.export prints the partial graph and a traceback through these loggers before it raises.
_NOISY_LOGGERS = ("torch.export", "torch._export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
                  "torch._subclasses.fake_tensor", "torch.fx._symbolic_trace")


def capture(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """Capture ``model`` with ``torch.export`` (batch dimension dynamic) and raise it to torch layers.

    The model is exported in eval mode (its own modes are restored afterwards); a model whose code fixes the
    batch size is exported with static shapes instead.

    Args:
        model: any ``nn.Module``; left untouched (the graph holds copies of its weights).
        example_inputs: one batch, a tuple with one entry per ``forward`` argument.

    Returns:
        A ``torch.fx.GraphModule`` in eval mode whose placeholders are ``forward``'s tensor arguments, with
        ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``... modules named after the model's own
        (``layer1.0.conv1``) and torch functions between them. Each node's ``meta`` keeps the
        ``stack_trace`` and ``nn_module_stack`` of the user's code it came from.

    Raises:
        CaptureError: ``torch.export`` cannot capture the model (control flow that depends on tensor values);
            the message names the user's file and line and what to change.

    Example:
        >>> from compress.models import DemoCNN
        >>> gm = capture(DemoCNN(width=4), (torch.zeros(1, 1, 8, 8),))
        >>> type(gm.get_submodule("conv1")).__name__, tuple(gm(torch.zeros(3, 1, 8, 8)).shape)
        ('Conv2d', (3, 10))
    """
    example_inputs = tuple(example_inputs)
    with _eval_mode(model), _quiet():
        try:
            program = _export_dynamic(model, example_inputs)
        except Exception as dynamic_exc:  # noqa: BLE001  (torch.export raises many unrelated types)
            try:
                program = torch.export.export(model, example_inputs)  # a batch size fixed in the code
            except Exception:  # noqa: BLE001
                raise CaptureError(_explain(model, dynamic_exc)) from dynamic_exc
    return raise_exported_program(program, source=type(model).__name__)


def _export_dynamic(model: nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    # A batch of 1 would be specialised (torch.export treats sizes 0 and 1 as constants): export two copies.
    tiled = tuple(torch.cat([t, t]) if _batched(t) and t.shape[0] == 1 else t for t in inputs)
    # Dim.AUTO: dynamic where the code allows it; a batch the code fixes (x.view(2, -1)) stays static.
    shapes = _by_signature(model, tuple({0: torch.export.Dim.AUTO} if _batched(t) else None for t in inputs))
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        try:
            with opaque_recurrent_ops():  # LSTM / GRU as one op each: export time independent of length
                return torch.export.export(model, tiled, dynamic_shapes=shapes)
        except Exception:  # noqa: BLE001  (an unusual RNN call: aten's own, slower path below)
            pass
    return torch.export.export(model, tiled, dynamic_shapes=shapes)


def _by_signature(model: nn.Module, shapes: tuple) -> tuple:
    """``shapes`` grouped as ``forward`` binds the inputs: a ``*args`` parameter takes one tuple of them."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return shapes
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return shapes if star is None or star > len(shapes) else (*shapes[:star], tuple(shapes[star:]))


def _batched(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() > 0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # nn.LSTM re-assigns its flat weight list during export: harmless, and not the user's to fix.
            warnings.filterwarnings("ignore", message=".*were assigned during export.*")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')


def _user_line(exc: BaseException) -> str | None:
    """``file:line (code)`` of the user's code that made torch.export fail, from its message or traceback."""
    def is_user(path: str) -> bool:
        if path.startswith(("<", _TORCH_DIR, _COMPRESS_DIR)):
            return False
        # A model from an installed package is the user's code; the standard library is not.
        return not path.startswith(_STDLIB_DIR) or "-packages" in path

    # torch.export quotes the user's frame under "The following call raised this error:".
    frames = [(m["file"], m["line"], m["code"].strip()) for m in _FRAME.finditer(str(exc)) if is_user(m["file"])]
    if not frames:
        chain, e = [], exc
        while e is not None and len(chain) < 8:
            chain.append(e)
            e = e.__cause__ or e.__context__
        for e in chain:
            frames += [(f.filename, str(f.lineno), (f.line or "").strip())
                       for f in traceback.extract_tb(e.__traceback__) if is_user(f.filename)]
    if not frames:
        return None
    path, line, code = frames[-1]
    return f"{Path(path).name}:{line}" + (f" ({code})" if code else "")


def _explain(model: nn.Module, exc: BaseException) -> str:
    where = _user_line(exc)
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    data_dependent = "data-dependent" in first or "GuardOnDataDependent" in type(exc).__name__
    what = ("its control flow depends on tensor values" if data_dependent else first.rstrip("."))
    fix = ("compute the branch with torch.where / torch.cond instead of Python `if` on a tensor, or move it out "
           "of forward()" if data_dependent else "make forward() traceable by torch.export, or save a "
           "torch.export program (.pt2) of the model")
    at = f" at {where}" if where else ""
    return f"torch.export cannot capture {type(model).__name__}{at}: {what}; {fix}"
