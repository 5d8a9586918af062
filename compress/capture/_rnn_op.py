"""nn.LSTM / nn.GRU as one opaque op while torch.export traces, so the capture time does not grow with length.

With a dynamic batch, ``torch.export`` runs ``aten.lstm``'s decomposition time step by time step on symbolic
shapes: a 64-step LSTM took ~10× its static export here (a zoo audio net ~4 s of CPU), and long sequences
minutes. While exporting, :func:`opaque_recurrent_ops` routes ``torch.lstm`` / ``torch.gru`` to the custom ops
``compress::lstm`` / ``compress::gru``, whose fake kernels only compute output shapes. Their arguments carry the
aten names, so the raiser's ``lstm`` / ``gru`` handlers rebuild the same ``nn.LSTM`` / ``nn.GRU`` modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode


@torch.library.custom_op("compress::lstm", mutates_args=())
def _lstm(input: torch.Tensor, hx: list[torch.Tensor], params: list[torch.Tensor], has_biases: bool,
          num_layers: int, dropout: float, train: bool, bidirectional: bool,
          batch_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, h, c = torch.ops.aten.lstm.input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                          batch_first)
    return out.clone(), h.clone(), c.clone()


@_lstm.register_fake
def _lstm_fake(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    hidden = hx[0].shape[-1]
    out = _output(input, hidden, bidirectional, batch_first)
    return out, hx[0].new_empty(hx[0].shape), hx[1].new_empty(hx[1].shape)


@torch.library.custom_op("compress::gru", mutates_args=())
def _gru(input: torch.Tensor, hx: torch.Tensor, params: list[torch.Tensor], has_biases: bool, num_layers: int,
         dropout: float, train: bool, bidirectional: bool, batch_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out, h = torch.ops.aten.gru.input(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
                                      batch_first)
    return out.clone(), h.clone()


@_gru.register_fake
def _gru_fake(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    out = _output(input, hx.shape[-1], bidirectional, batch_first)
    return out, hx.new_empty(hx.shape)


def _output(input: torch.Tensor, hidden, bidirectional: bool, batch_first: bool) -> torch.Tensor:
    width = hidden * (2 if bidirectional else 1)
    if input.dim() == 2:  # an unbatched sequence [T, features]
        return input.new_empty(input.shape[0], width)
    return input.new_empty(input.shape[0], input.shape[1], width)  # [T, N] or [N, T] either way


class _Opaque(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Only the "input" overload (a padded tensor, 9 arguments); packed sequences keep aten's own path.
        if func in (torch.lstm, torch._VF.lstm) and len(args) == 9 and isinstance(args[1], (list, tuple)):
            return torch.ops.compress.lstm(args[0], list(args[1]), list(args[2]), *args[3:])
        if func in (torch.gru, torch._VF.gru) and len(args) == 9 and isinstance(args[1], torch.Tensor):
            return torch.ops.compress.gru(args[0], args[1], list(args[2]), *args[3:])
        return func(*args, **kwargs)


@contextmanager
def opaque_recurrent_ops() -> Iterator[None]:
    """While active, ``torch.lstm`` / ``torch.gru`` calls (``nn.LSTM`` / ``nn.GRU``) run as single custom ops."""
    with _Opaque():
        yield
