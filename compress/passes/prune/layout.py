"""What the channel analysis tracks per tensor and per module tensor (shared by :mod:`.groups` and :mod:`.axes`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx


@dataclass(frozen=True)
class Layout:
    """The channel axis of one tensor: ``spaces`` end to end, ``axis`` counted from the end (1 = last)."""

    spaces: tuple[int, ...]
    axis: int
    inner: int = 1  # contiguous columns per channel (ΠS after a flatten of [N, C, *S])


@dataclass(frozen=True)
class Member:
    """A module tensor indexed by channels: ``role`` says which axis (out, in, dw, norm)."""

    module: str
    role: str
    layout: Layout


@dataclass
class Space:
    size: int
    producer: str | None  # module path; None for fixed spaces (the model input, constants)
    blocked: list[str] = field(default_factory=list)
    unit: int = 1  # contiguous producer columns per unit: head_dim once a reshape split heads out of it


@dataclass(frozen=True)
class ShapeEdit:
    """A literal size in a reshape's target shape that counts units of a channel space (``num_heads`` in
    ``view(x, [n, t, 12, 64])``, or ``12 * 64`` after the heads are merged back): pruning rewrites it to the
    kept units × ``unit``."""

    node: str
    arg: int  # index into node.args
    pos: int | None  # index into that list / tuple, or None when the size is the argument itself
    space: int
    unit: int = 1


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _shape(n) is not None else None)
    return found


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
