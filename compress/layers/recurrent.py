"""QuantLSTM and QuantGRU: recurrent layers with int8 weights and simulated int8 activations.

The recurrence runs explicitly in Python, one time step at a time, so that every tensor an int8 kernel
would see can be quantized where it is produced:

* weights: every ``weight_ih_l{k}[_reverse]`` / ``weight_hh_l{k}[_reverse]`` has its own symmetric int8
  quantizer in ``weight_quants`` (per gate row: axis 0 of the stacked ``[gates·hidden, in]`` matrix);
* biases: snapped to int32 at scale input_scale × weight_scale once the input / hidden scales are known;
* the input of every layer (``input_quant`` for layer 0 when ``quantize_io``; ``layer_input_quants`` for the
  others: they are internal edges no graph pass can see) and the hidden state after every step
  (``hidden_quants``, one per layer and direction; the initial state goes through it too);
* gate non-linearities and the LSTM cell state stay float (int8 runtimes keep the cell in int16 or float).

In ``dynamic`` mode (LSTM: onnxruntime's DynamicQuantizeLSTM) no quantizer is calibrated: each layer's input
sequence is quantized as one tensor per call, and the hidden state before every step's recurrent matmul,
both as DynamicQuantizeLinear does (:mod:`compress.layers.dynamic`); biases stay float. In ``weight-only``
mode only the weights are quantized.

With the quantizers removed the layers compute exactly what ``nn.LSTM`` / ``nn.GRU`` compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from compress.errors import ConfigError
from compress.layers.base import (
    FusedActivation,
    QuantLayerMixin,
    check_float_type,
    copy_float_params,
    fake_quantize_bias,
)
from compress.layers.dynamic import fake_quantize_dynamic
from compress.quant.config import QuantConfig, QuantMode
from compress.quant.fake import Quantizer, QuantState


def _known_scale(q: nn.Module | None) -> torch.Tensor | None:
    if isinstance(q, Quantizer) and q.state is not QuantState.OBSERVING:
        return q.scale.detach()
    return None


def _maybe(q: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return q(x) if q is not None else x


class _QuantRNNMixin(QuantLayerMixin):
    """Quantizers, from_float / to_float and the layer/direction loop shared by QuantLSTM and QuantGRU."""

    _STATE_IS_TUPLE = False

    def _init_rnn_quant(self, config: QuantConfig, quantize_io: bool) -> None:
        self.qconfig = config
        self.activation = FusedActivation.NONE
        self.register_buffer("input_scale", None)
        num_dirs = 2 if self.bidirectional else 1
        self.weight_quants = nn.ModuleDict(
            {name: config.weight_quantizer(0) for name in self._flat_weights_names if name.startswith("weight")}
        )
        # Dynamic and weight-only layers calibrate nothing: their activation quantizer lists stay empty.
        static = self.quant_mode is QuantMode.STATIC
        self.input_quant = config.activation_quantizer() if quantize_io and static else None
        self.output_quant = config.activation_quantizer() if quantize_io and static else None
        self.layer_input_quants = nn.ModuleList(
            [config.activation_quantizer() for _ in range(self.num_layers - 1)] if static else []
        )
        self.hidden_quants = nn.ModuleList(
            [config.activation_quantizer() for _ in range(self.num_layers * num_dirs)] if static else []
        )

    @property
    def quant_mode(self) -> QuantMode:
        # Not ``mode``: nn.LSTM / nn.GRU already use that name ("LSTM", "GRU").
        return getattr(self.qconfig, "mode", QuantMode.STATIC)

    def _dynamic_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_dynamic(x) if self.quant_mode is QuantMode.DYNAMIC else x

    # -- conversions -----------------------------------------------------------------------------------
    def _rnn_kwargs(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                    bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                    bidirectional=self.bidirectional)

    @classmethod
    def from_float(cls, mod: nn.Module, config: QuantConfig | None = None, *, quantize_io: bool = False):
        check_float_type(cls, mod)
        if getattr(mod, "proj_size", 0):
            raise ConfigError(
                f"{type(mod).__name__}(proj_size={mod.proj_size}) is not supported by {cls.__name__}; "
                "use proj_size=0 or leave this layer in float"
            )
        w = mod.weight_ih_l0
        q = cls(**_QuantRNNMixin._rnn_kwargs(mod), config=config, quantize_io=quantize_io,
                device=w.device, dtype=w.dtype)
        copy_float_params(q, mod)
        return q

    def to_float(self) -> nn.Module:
        w = self.weight_ih_l0
        m = self._FLOAT_MODULE(**self._rnn_kwargs(), device=w.device, dtype=w.dtype)
        copy_float_params(m, self)
        return m

    def freeze(self) -> None:
        """Fix every qparam (convert): weight scales from the final weights, observers dropped."""
        for name, q in self.weight_quants.items():
            if isinstance(q, Quantizer):
                q.freeze(getattr(self, name).detach())
        for q in [self.input_quant, self.output_quant, *self.layer_input_quants, *self.hidden_quants]:
            if isinstance(q, Quantizer):
                q.freeze()

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Every weight matrix as the int8 kernel sees it (fake-quantized), by parameter name."""
        return {name: self.weight_quants[name](getattr(self, name)) for name in self.weight_quants}

    def _bias(self, name: str, input_scale: torch.Tensor | None, weight_q: nn.Module) -> torch.Tensor | None:
        if not self.bias:
            return None
        bias = getattr(self, name)
        weight_scale = _known_scale(weight_q)
        if input_scale is None or weight_scale is None:
            return bias
        return fake_quantize_bias(bias, input_scale, weight_scale)

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, input: torch.Tensor, hx=None):  # noqa: A002 - the nn.LSTM / nn.GRU argument name
        if isinstance(input, PackedSequence):
            raise ConfigError(
                f"{type(self).__name__} does not take a PackedSequence; pass the padded tensor instead "
                "(torch.nn.utils.rnn.pad_packed_sequence)"
            )
        batched = input.dim() == 3
        if not batched:
            if input.dim() != 2:
                raise ConfigError(f"{type(self).__name__} expects a 2-d or 3-d input, got {input.dim()}-d")
            input = input.unsqueeze(1)
            hx = None if hx is None else _map_state(hx, lambda t: t.unsqueeze(1))
        elif self.batch_first:
            input = input.transpose(0, 1)
        num_dirs = 2 if self.bidirectional else 1
        batch = input.shape[1]
        if hx is None:
            zeros = input.new_zeros(self.num_layers * num_dirs, batch, self.hidden_size)
            hx = (zeros, zeros) if self._STATE_IS_TUPLE else zeros

        x = _maybe(self.input_quant, input)
        x_scale = self.known_input_scale()
        finals = []
        for layer in range(self.num_layers):
            if layer > 0:
                if self.dropout and self.training:
                    x = F.dropout(x, self.dropout, training=True)
                if len(self.layer_input_quants):
                    x = self.layer_input_quants[layer - 1](x)
                    x_scale = _known_scale(self.layer_input_quants[layer - 1])
            outs = []
            for d in range(num_dirs):
                idx = layer * num_dirs + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                hq = self.hidden_quants[idx] if len(self.hidden_quants) else None
                wq_ih, wq_hh = self.weight_quants["weight_ih" + sfx], self.weight_quants["weight_hh" + sfx]
                w_ih, w_hh = wq_ih(getattr(self, "weight_ih" + sfx)), wq_hh(getattr(self, "weight_hh" + sfx))
                b_ih = self._bias("bias_ih" + sfx, x_scale, wq_ih)
                state0 = _map_state(hx, lambda t, i=idx: t[i])
                state0 = _replace_h(state0, _maybe(hq, _h_of(state0)))
                b_hh = self._bias("bias_hh" + sfx, _known_scale(hq), wq_hh)
                out, state = self._run_direction(x, state0, w_ih, w_hh, b_ih, b_hh, hq, reverse=bool(d))
                outs.append(out)
                finals.append(state)
            x = torch.cat(outs, dim=-1) if num_dirs == 2 else outs[0]

        y = _maybe(self.output_quant, x)
        if self._STATE_IS_TUPLE:
            state_n = (torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
        else:
            state_n = torch.stack(finals)
        if not batched:
            return y.squeeze(1), _map_state(state_n, lambda t: t.squeeze(1))
        if self.batch_first:
            y = y.transpose(0, 1)
        return y, state_n

    def _run_direction(self, x, state0, w_ih, w_hh, b_ih, b_hh, hq, *, reverse: bool):
        raise NotImplementedError


def _map_state(state, fn):
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


def _h_of(state):
    return state[0] if isinstance(state, tuple) else state


def _replace_h(state, h):
    return (h, state[1]) if isinstance(state, tuple) else h


def _time_order(length: int, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


class QuantLSTM(_QuantRNNMixin, nn.LSTM):
    """Drop-in ``nn.LSTM`` simulating int8 weights and activations (layers, bidirectional, batch_first).

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as in ``nn.LSTM``
            (``proj_size`` is not supported).
        config: quantization formats.
        quantize_io: also quantize the layer's input and output sequence (standalone use).

    Example:
        >>> lstm = QuantLSTM.from_float(nn.LSTM(4, 8, batch_first=True))
        >>> y, (h, c) = lstm(torch.randn(2, 5, 4))
        >>> y.shape, h.shape
        (torch.Size([2, 5, 8]), torch.Size([1, 2, 8]))
    """

    _FLOAT_MODULE = nn.LSTM
    _STATE_IS_TUPLE = True
    _MODES = (QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 config: QuantConfig | None = None, quantize_io: bool = False, device=None, dtype=None):
        super().__init__(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         device=device, dtype=dtype)
        self._init_rnn_quant(config or QuantConfig(), quantize_io)

    def _run_direction(self, x, state0, w_ih, w_hh, b_ih, b_hh, hq, *, reverse: bool):
        # The input projection of all time steps is one matmul; only the hidden path is sequential.
        gates_x = F.linear(self._dynamic_input(x), w_ih, b_ih)
        h, c = state0
        outs: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
        for t in _time_order(x.shape[0], reverse):
            i, f, g, o = (gates_x[t] + F.linear(self._dynamic_input(h), w_hh, b_hh)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = _maybe(hq, torch.sigmoid(o) * torch.tanh(c))
            outs[t] = h
        return torch.stack(outs), (h, c)


class QuantGRU(_QuantRNNMixin, nn.GRU):
    """Drop-in ``nn.GRU`` simulating int8 weights and activations (layers, bidirectional, batch_first).

    Example:
        >>> gru = QuantGRU.from_float(nn.GRU(4, 8, num_layers=2))
        >>> y, h = gru(torch.randn(5, 2, 4))
        >>> y.shape, h.shape
        (torch.Size([5, 2, 8]), torch.Size([2, 2, 8]))
    """

    _FLOAT_MODULE = nn.GRU
    # onnxruntime has no dynamically quantized GRU: a dynamic GRU is written weight-only (prepare).
    _MODES = (QuantMode.STATIC, QuantMode.WEIGHT_ONLY)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 config: QuantConfig | None = None, quantize_io: bool = False, device=None, dtype=None):
        super().__init__(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         device=device, dtype=dtype)
        self._init_rnn_quant(config or QuantConfig(), quantize_io)

    def _run_direction(self, x, state0, w_ih, w_hh, b_ih, b_hh, hq, *, reverse: bool):
        gates_x = F.linear(x, w_ih, b_ih)
        h = state0
        outs: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
        for t in _time_order(x.shape[0], reverse):
            x_r, x_z, x_n = gates_x[t].chunk(3, dim=-1)
            h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h = _maybe(hq, (1 - z) * n + z * h)
            outs[t] = h
        return torch.stack(outs), h
