"""Which data array feeds which ``forward`` parameter (models with several inputs).

A model with several inputs is fed positionally (``model(*inputs)``; the exporters' example tuples and the
runtimes' input lists are positional too), so the named arrays of a data set are put in the order of
``forward``'s parameters here, once, before anything runs. Arrays named ``x0, x1, ...`` bind by position.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from compress.errors import DataError

__all__ = ["ForwardParams", "forward_params", "order_inputs"]

_POSITIONAL = re.compile(r"x(\d+)")


@dataclass(frozen=True)
class ForwardParams:
    """``forward``'s input parameters: their names in order, how many have no default, and ``*args``."""

    owner: str
    names: tuple[str, ...]
    required: int
    variadic: bool

    def describe(self) -> str:
        shown = list(self.names) + (["*args"] if self.variadic else [])
        return f"{self.owner}.forward({', '.join(shown)})"


def forward_params(model: nn.Module) -> ForwardParams:
    """The input parameters of ``model.forward`` (a ``.pt2`` graph's placeholders carry the same names).

    Example:
        >>> forward_params(nn.Bilinear(2, 3, 4))
        ForwardParams(owner='Bilinear', names=('input1', 'input2'), required=2, variadic=False)
    """
    owner = type(model).__name__
    # compress.io.ExportedModule wraps a torch.export graph behind forward(*args): read the graph's names.
    inner = getattr(model, "exported", None)
    target = inner if isinstance(inner, nn.Module) else model
    try:
        sig = inspect.signature(target.forward)
    except (TypeError, ValueError):  # a builtin or C-level forward: nothing to match names against
        return ForwardParams(owner, (), 0, True)
    names: list[str] = []
    required = 0
    variadic = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            variadic = True
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
            if p.default is p.empty and len(names) == required + 1:
                required += 1
    return ForwardParams(owner, tuple(names), required, variadic)


def _positional_index(names: Sequence[str]) -> list[int] | None:
    """``x0, x1, ...`` (any order) → their indices, when the names are exactly 0..k-1; else None."""
    found = [_POSITIONAL.fullmatch(n) for n in names]
    if not all(found):
        return None
    idx = [int(m.group(1)) for m in found]  # type: ignore[union-attr]
    return idx if sorted(idx) == list(range(len(idx))) else None


def order_inputs(params: ForwardParams, names: Sequence[str], source: str) -> list[str]:
    """``names`` (the data's inputs) in the order ``forward`` takes them.

    One input binds to the first parameter whatever its name (``x`` is the documented single-input name);
    ``x0, x1, ...`` bind by position; any other names must be ``forward``'s parameter names, covering every
    parameter without a default and leaving no gap (inputs are fed positionally).

    Raises:
        DataError: a name ``forward`` does not take, a parameter left without data, or too many inputs —
            naming the parameters expected and the names found.

    Example:
        >>> p = ForwardParams("Net", ("input_ids", "attention_mask"), 2, False)
        >>> order_inputs(p, ["attention_mask", "input_ids"], "calib.npz")
        ['input_ids', 'attention_mask']
        >>> order_inputs(p, ["x1", "x0"], "calib.npz")
        ['x0', 'x1']
    """
    names = list(names)
    k = len(names)
    expected = params.describe()
    found = ", ".join(names)
    if not params.names and params.variadic:
        positional = _positional_index(names)
        return [names[i] for i in sorted(range(k), key=lambda j: positional[j])] if positional else names
    if k < params.required and (k == 1 or _positional_index(names) is not None):
        raise DataError(f"data from {source} has {k} input{'s' if k > 1 else ''} ({found}) but {expected} needs "
                        f"{params.required}; save one array per parameter, named after them")
    if k > len(params.names) and not params.variadic:
        raise DataError(f"data from {source} has {k} inputs ({found}) but {expected} takes {len(params.names)}; "
                        "drop the extra arrays (y is the only non-input array)")
    if k == 1:
        return names
    positional = _positional_index(names)
    if positional is not None:
        return [names[i] for i in sorted(range(k), key=lambda j: positional[j])]
    unknown = [n for n in names if n not in params.names]
    missing = [p for p in params.names[:params.required] if p not in names]
    if unknown or missing:
        parts = ([f"unknown {', '.join(unknown)}"] if unknown else []) + (
            [f"missing {', '.join(missing)}"] if missing else [])
        raise DataError(f"data from {source} has inputs {found} but {expected} takes other names "
                        f"({'; '.join(parts)}); name the arrays after forward's parameters, or x0, x1, ... in order")
    ordered = [p for p in params.names if p in names]
    gap = next((p for p in params.names[:k] if p not in names), None)
    if gap is not None:
        raise DataError(f"data from {source} has inputs {found} but {expected} takes {gap!r} before "
                        f"{ordered[-1]!r}; give {gap} too (inputs are fed in forward's order)")
    return ordered
