"""``--input-shape``: parse it, check the memory it needs before allocating anything, and name the shape the
model expects when it does not fit.

A shape typed by hand can ask for terabytes (``1,3,100000,100000`` is 112 GiB for the input alone); allocating
it first fails after seconds or minutes with a MemoryError, or the kernel kills the process. So the model is
first run on torch's ``meta`` device (shapes only, no memory, milliseconds), which also yields every layer's
output size; the estimate is compared with the memory available before any real tensor exists.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

from compress.errors import ConfigError, ResourceError

FLOAT_BYTES = 4


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) → ``(1, 3, 224, 224)``; anything else is a ConfigError.

    Example:
        >>> parse_shape("1x3x8x8")
        (1, 3, 8, 8)
    """
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"{option} {text!r} is not a shape; write positive sizes like 1,3,224,224")
    return shape


def fmt_size(n: float) -> str:
    """Bytes as ``1.5 GiB`` / ``112 GiB`` / ``3.2 TiB``.

    Example:
        >>> fmt_size(1.5 * 2**30), fmt_size(120e9)
        ('1.5 GiB', '112 GiB')
    """
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _meta_activation_bytes(net, shape: Sequence[int]) -> int | None:
    """The largest layer output of ``net`` on a float input of ``shape``, from a run on the meta device.

    Returns None when the model cannot run on ``meta`` (custom ops, a torch.export program) or rejects the
    shape: the real run on a small input then gives the model's own, clearer message (meta kernels say
    "Invalid channel dimensions" where the real conv names the channels).
    """
    import torch

    try:
        meta_net = copy.deepcopy(net).to("meta")
    except Exception:  # not every module can be copied or moved (exported programs, C++ extensions)
        return None
    largest = 0

    def hook(_module, _inputs, output):
        nonlocal largest
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in meta_net.modules()]
    try:
        with torch.no_grad():
            meta_net.eval()(torch.empty(tuple(shape), device="meta"))
    except (NotImplementedError, RuntimeError, ValueError, IndexError, TypeError, AssertionError):
        return None
    finally:
        for h in handles:
            h.remove()
    return largest


def expected_shape(net, shape: Sequence[int]) -> tuple[int, ...] | None:
    """``shape`` corrected to the first weighted layer's input size (channels of a conv, features of a linear).

    Example:
        >>> from torch import nn
        >>> expected_shape(nn.Sequential(nn.Conv2d(1, 4, 3)), (1, 3, 224, 224))
        (1, 1, 224, 224)
    """
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and len(shape) == m.weight.dim():
            return (shape[0], m.in_channels, *shape[2:]) if shape[1] != m.in_channels else None
        if isinstance(m, nn.Linear):
            return (*shape[:-1], m.in_features) if shape[-1] != m.in_features else None
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Embedding):
            return None
    return None


def shape_error(net, text: str, shape: Sequence[int], detail: str, option: str = "--input-shape") -> ConfigError:
    """The error for a shape the model rejects, naming the shape it takes when that is known."""
    want = expected_shape(net, shape)
    detail = " ".join(detail.split())[:200]
    if want is not None:
        return ConfigError(f"{option} {text} does not fit the model ({detail}); it takes "
                           f"{','.join(map(str, want))}: pass {option} {','.join(map(str, want))}")
    return ConfigError(f"{option} {text} does not fit the model ({detail}); pass the shape its first layer "
                       "takes (see `compress inspect MODEL`)")


def check_shape_memory(net, text: str, shape: Sequence[int], *, copies: int = 1, option: str = "--input-shape",
                       available: int | None = None) -> int:
    """Check that ``copies`` inputs of ``shape`` and the model's activations fit in memory; return the estimate.

    The estimate is ``copies`` inputs plus twice the largest layer output (a layer's input and output are
    alive together), measured on the meta device. Raises before anything is allocated.

    Raises:
        ResourceError: the estimate exceeds the available memory (names both and the fix).

    Example:
        >>> from torch import nn
        >>> check_shape_memory(nn.Conv2d(1, 2, 3, padding=1), "1,1,8,8", (1, 1, 8, 8), available=10**9)
        1280
        >>> check_shape_memory(nn.Conv2d(1, 2, 3), "1,1,99999,99999", (1, 1, 99999, 99999), available=10**9)
        Traceback (most recent call last):
        ...
        compress.errors.ResourceError: --input-shape 1,1,99999,99999 needs about 112 GiB of memory (inputs \
37 GiB, largest layer output 75 GiB) but 954 MiB are available; use a smaller shape, e.g. a batch of 1 and the \
resolution the model was trained at
    """
    input_bytes = math.prod(shape) * FLOAT_BYTES
    activation = _meta_activation_bytes(net, shape)
    need = copies * input_bytes + 2 * (activation or 0)
    free = available_memory() if available is None else available
    if free is not None and need > free:
        parts = f"inputs {fmt_size(copies * input_bytes)}"
        if activation:
            parts += f", largest layer output {fmt_size(activation)}"
        raise ResourceError(f"{option} {text} needs about {fmt_size(need)} of memory ({parts}) but "
                            f"{fmt_size(free)} are available; use a smaller shape, e.g. a batch of 1 and the "
                            "resolution the model was trained at")
    return need
