"""QuantLSTM / QuantGRU: exact nn.LSTM / nn.GRU with quantization off, integer reference with it on."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers import QuantGRU, QuantLSTM
from compress.layers.base import all_quantizers
from compress.quant.reference import dequantize, quantize
from compress.quant.reference_extra import lsb_agreement, rnn_direction_int

PAIRS = {"lstm": (nn.LSTM, QuantLSTM), "gru": (nn.GRU, QuantGRU)}


def _without_quantization(rnn):
    for name in list(rnn.weight_quants):
        rnn.weight_quants[name] = nn.Identity()
    for i in range(len(rnn.hidden_quants)):
        rnn.hidden_quants[i] = nn.Identity()
    for i in range(len(rnn.layer_input_quants)):
        rnn.layer_input_quants[i] = nn.Identity()
    return rnn


def _qp(q) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


CONFIGS = {
    "one-layer": dict(),
    "two-layer-bidirectional": dict(num_layers=2, bidirectional=True),
    "batch-first-no-bias-3-layers": dict(num_layers=3, batch_first=True, bias=False),
    "dropout-eval": dict(num_layers=2, dropout=0.3),
}


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("initial_state", [False, True])
def test_matches_float_rnn_without_quantization(kind, config, initial_state):
    torch.manual_seed(0)
    float_cls, quant_cls = PAIRS[kind]
    kwargs = CONFIGS[config]
    float_rnn = float_cls(3, 5, **kwargs).eval()
    quant = _without_quantization(quant_cls.from_float(float_rnn)).eval()
    x = torch.randn(2, 6, 3) if kwargs.get("batch_first") else torch.randn(6, 2, 3)
    hx = None
    if initial_state:
        dirs = 2 if kwargs.get("bidirectional") else 1
        h0 = torch.randn(kwargs.get("num_layers", 1) * dirs, 2, 5)
        hx = (h0, torch.randn_like(h0)) if kind == "lstm" else h0
    y_f, s_f = float_rnn(x, hx)
    y_q, s_q = quant(x, hx)
    torch.testing.assert_close(y_q, y_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_q, s_f, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_unbatched_input_matches_float(kind):
    torch.manual_seed(1)
    float_cls, quant_cls = PAIRS[kind]
    float_rnn = float_cls(3, 4, bidirectional=True)
    quant = _without_quantization(quant_cls.from_float(float_rnn))
    x = torch.randn(7, 3)
    y_f, s_f = float_rnn(x)
    y_q, s_q = quant(x)
    torch.testing.assert_close(y_q, y_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_q, s_f, rtol=1e-5, atol=1e-5)


def _reference(rnn, kind: str, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None):
    """Compose the per-direction integer reference into the whole (multi-layer, bidirectional) network."""
    dirs = 2 if rnn.bidirectional else 1
    x_qp = _qp(rnn.input_quant)
    codes = quantize(x, *x_qp, -128, 127)
    finals_h, layer_out = [], None
    for layer in range(rnn.num_layers):
        if layer > 0:
            x_qp = _qp(rnn.layer_input_quants[layer - 1])
            codes = quantize(layer_out, *x_qp, -128, 127)
        outs = []
        for d in range(dirs):
            idx, sfx = layer * dirs + d, f"_l{layer}" + ("_reverse" if d else "")
            p = {name: getattr(rnn, name + sfx).detach().numpy() for name in ("weight_ih", "weight_hh")}
            b_ih = getattr(rnn, "bias_ih" + sfx).detach().numpy() if rnn.bias else None
            b_hh = getattr(rnn, "bias_hh" + sfx).detach().numpy() if rnn.bias else None
            h_qp = _qp(rnn.hidden_quants[idx])
            seq, h_last, _ = rnn_direction_int(kind, codes, *x_qp, p["weight_ih"], p["weight_hh"], b_ih, b_hh,
                                               h0[idx], None if c0 is None else c0[idx], *h_qp, reverse=bool(d))
            outs.append(dequantize(seq, *h_qp))
            finals_h.append(dequantize(h_last, *h_qp))
        layer_out = np.concatenate(outs, axis=-1)
    out_qp = _qp(rnn.output_quant)
    return quantize(layer_out, *out_qp, -128, 127), np.stack(finals_h)


@pytest.mark.parametrize("kind", list(PAIRS))
@pytest.mark.parametrize("config", ["one-layer", "two-layer-bidirectional"])
def test_matches_integer_reference(kind, config):
    torch.manual_seed(2)
    float_cls, quant_cls = PAIRS[kind]
    rnn = quant_cls.from_float(float_cls(4, 6, **CONFIGS[config]), quantize_io=True).eval()
    dirs = 2 if rnn.bidirectional else 1
    h0 = torch.randn(rnn.num_layers * dirs, 3, 6) * 0.5
    hx = (h0, torch.randn_like(h0) * 0.5) if kind == "lstm" else h0
    with torch.no_grad():
        for _ in range(3):
            rnn(torch.randn(8, 3, 4), hx)
    rnn.freeze()
    x = torch.randn(8, 3, 4)
    with torch.no_grad():
        y, state = rnn(x, hx)
    h_n = state[0] if kind == "lstm" else state
    ref_codes, ref_h = _reference(rnn, kind, x.numpy(), h0.numpy(), hx[1].numpy() if kind == "lstm" else None)
    out_qp = _qp(rnn.output_quant)
    frac, max_lsb = lsb_agreement(y.numpy(), dequantize(ref_codes, *out_qp), out_qp[0])
    assert frac >= 0.99 and max_lsb <= 2.0, f"output: {frac:.4f} within 1 LSB, max {max_lsb:.2f} LSB"
    for idx in range(len(ref_h)):
        h_scale = _qp(rnn.hidden_quants[idx])[0]
        frac, max_lsb = lsb_agreement(h_n[idx].numpy(), ref_h[idx], h_scale)
        assert frac >= 0.99 and max_lsb <= 2.0, f"h_n[{idx}]: {frac:.4f} within 1 LSB, max {max_lsb:.2f}"


@pytest.mark.parametrize("kind", list(PAIRS))
def test_to_float_round_trip_is_exact(kind):
    torch.manual_seed(3)
    float_cls, quant_cls = PAIRS[kind]
    float_rnn = float_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    back = quant_cls.from_float(float_rnn).to_float()
    assert type(back) is float_cls
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(back(x)[0], float_rnn(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_gradients_flow_in_train_mode(kind):
    torch.manual_seed(4)
    float_cls, quant_cls = PAIRS[kind]
    rnn = quant_cls.from_float(float_cls(3, 4, num_layers=2), quantize_io=True).train()
    with torch.no_grad():
        rnn(torch.randn(5, 2, 3))
    for q in all_quantizers(rnn):
        q.start_quantizing()
    x = torch.randn(5, 2, 3, requires_grad=True)
    rnn(x)[0].square().sum().backward()
    for grad in (rnn.weight_ih_l0.grad, rnn.weight_hh_l1.grad, rnn.bias_hh_l0.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_state_dict_round_trip():
    torch.manual_seed(5)
    a = QuantLSTM(3, 4, num_layers=2).eval()
    b = QuantLSTM(3, 4, num_layers=2).eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        a(x)
        b(x * 2)  # shapes the per-channel weight qparams
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    a.freeze(), b.freeze()
    torch.testing.assert_close(b(x)[0], a(x)[0], rtol=0, atol=0)


def test_rejects_packed_sequence_and_projection():
    rnn = QuantLSTM(3, 4)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 3), [5, 3])
    with pytest.raises(ConfigError, match="pad_packed_sequence"):
        rnn(packed)
    with pytest.raises(ConfigError, match="proj_size"):
        QuantLSTM.from_float(nn.LSTM(3, 4, proj_size=2))
