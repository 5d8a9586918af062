"""QuantMultiheadAttention: float equivalence with quantization off, integer reference with it on."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from compress.layers import QuantLinear, QuantMultiheadAttention
from compress.layers.base import all_quantizers
from compress.quant.reference import dequantize, quantize
from compress.quant.reference_extra import attention_int, lsb_agreement


def _without_quantization(mha: QuantMultiheadAttention) -> QuantMultiheadAttention:
    for name in list(mha.weight_quants):
        mha.weight_quants[name] = nn.Identity()
    mha.q_quant = mha.k_quant = mha.v_quant = mha.attn_quant = None
    mha.out_proj.weight_quant = nn.Identity()
    mha.out_proj.input_quant = None
    return mha


def _qp(q) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


CASES = {
    "self": dict(kwargs={}, cross=False),
    "batch-first": dict(kwargs={"batch_first": True}, cross=False),
    "bias-kv-zero-attn": dict(kwargs={"add_bias_kv": True, "add_zero_attn": True}, cross=True),
    "kdim-vdim": dict(kwargs={"kdim": 3, "vdim": 5}, cross=True),
    "no-bias": dict(kwargs={"bias": False}, cross=True),
}


def _inputs(kwargs: dict, cross: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, tgt, src = 3, 4, 6 if cross else 4
    q = torch.randn(tgt, n, 8, generator=g)
    k = torch.randn(src, n, kwargs.get("kdim", 8), generator=g) if cross else q
    v = torch.randn(src, n, kwargs.get("vdim", 8), generator=g) if cross else q
    if kwargs.get("batch_first"):
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    return q, k, v, n, tgt, src


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("masks", ["none", "padding", "float-attn", "bool-attn+padding+per-head"])
def test_matches_float_mha_without_quantization(case, masks):
    torch.manual_seed(0)
    kwargs, cross = CASES[case]["kwargs"], CASES[case]["cross"]
    float_mha = nn.MultiheadAttention(8, 2, **kwargs)
    quant = _without_quantization(QuantMultiheadAttention.from_float(float_mha))
    q, k, v, n, tgt, src = _inputs(kwargs, cross)
    args = {}
    if masks != "none":
        kpm = torch.zeros(n, src, dtype=torch.bool)
        kpm[0, -2:] = True
        args["key_padding_mask"] = kpm
    if masks == "float-attn":
        args = {"attn_mask": torch.randn(tgt, src)}
    if masks == "bool-attn+padding+per-head":
        args["attn_mask"] = torch.ones(tgt, src, dtype=torch.bool).triu(1)
        args["average_attn_weights"] = False
    out_f, w_f = float_mha(q, k, v, **args)
    out_q, w_q = quant(q, k, v, **args)
    torch.testing.assert_close(out_q, out_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_q, w_f, rtol=1e-5, atol=1e-5)


def test_unbatched_and_need_weights_false_match_float():
    torch.manual_seed(1)
    float_mha = nn.MultiheadAttention(8, 4)
    quant = _without_quantization(QuantMultiheadAttention.from_float(float_mha))
    x = torch.randn(5, 8)
    torch.testing.assert_close(quant(x, x, x)[0], float_mha(x, x, x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(quant(x, x, x)[1], float_mha(x, x, x)[1], rtol=1e-5, atol=1e-5)
    out, weights = quant(x, x, x, need_weights=False)
    assert weights is None and out.shape == (5, 8)


def test_causal_flag_builds_the_causal_mask():
    torch.manual_seed(2)
    quant = _without_quantization(QuantMultiheadAttention(8, 2, batch_first=True))
    x = torch.randn(2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    torch.testing.assert_close(quant(x, x, x, is_causal=True)[0], quant(x, x, x, attn_mask=causal)[0])


@pytest.mark.parametrize("case", ["self", "batch-first", "kdim-vdim"])
@pytest.mark.parametrize("with_padding", [False, True])
def test_matches_integer_reference(case, with_padding):
    torch.manual_seed(3)
    kwargs, cross = CASES[case]["kwargs"], CASES[case]["cross"]
    mha = QuantMultiheadAttention.from_float(nn.MultiheadAttention(8, 2, **kwargs), quantize_io=True).eval()
    with torch.no_grad():
        for seed in range(4):
            mha(*_inputs(kwargs, cross, seed=10 + seed)[:3])
    mha.freeze()
    q, k, v, n, tgt, src = _inputs(kwargs, cross, seed=99)
    kpm = None
    if with_padding:
        kpm = torch.zeros(n, src, dtype=torch.bool)
        kpm[1, -1:] = True
    with torch.no_grad():
        out, weights = mha(q, k, v, key_padding_mask=kpm)

    time_major = (lambda t: t.transpose(0, 1)) if kwargs.get("batch_first") else (lambda t: t)
    qp = {"x_q": _qp(mha.input_quant), "x_k": _qp(mha.key_input_quant), "x_v": _qp(mha.value_input_quant),
          "q": _qp(mha.q_quant), "k": _qp(mha.k_quant), "v": _qp(mha.v_quant), "p": _qp(mha.attn_quant),
          "ctx": _qp(mha.out_proj.input_quant), "out": _qp(mha.output_quant)}
    codes = [quantize(time_major(t).numpy(), *qp[name], -128, 127)
             for t, name in ((q, "x_q"), (k, "x_k"), (v, "x_v"))]
    w_q, w_k, w_v = (w.detach().numpy() for w in mha._float_proj_weights())
    biases = [None] * 3 if mha.in_proj_bias is None else [b.detach().numpy() for b in mha.in_proj_bias.chunk(3)]
    weights_np = {"wq": w_q, "wk": w_k, "wv": w_v, "bq": biases[0], "bk": biases[1], "bv": biases[2],
                  "wo": mha.out_proj.weight.detach().numpy(),
                  "bo": None if mha.out_proj.bias is None else mha.out_proj.bias.detach().numpy()}
    mask = None
    if kpm is not None:
        mask = np.where(kpm.numpy(), -np.inf, 0.0)[:, None, None, :].repeat(2, axis=1).reshape(n * 2, 1, src)
    ref = attention_int(*codes, weights_np, qp, num_heads=2, additive_mask=mask)
    expected = dequantize(ref, *qp["out"])
    frac, max_lsb = lsb_agreement(time_major(out).numpy(), expected, qp["out"][0])
    assert frac >= 0.99 and max_lsb <= 2.0, f"{frac:.4f} within 1 LSB, max {max_lsb:.2f} LSB"
    # The returned attention weights are averages of probabilities on the attn_quant grid.
    assert weights.min() >= 0 and weights.max() <= 1 + 1e-6


def test_to_float_round_trip_is_exact():
    torch.manual_seed(4)
    for kwargs in ({}, {"kdim": 3, "vdim": 5, "add_bias_kv": True, "batch_first": True}):
        float_mha = nn.MultiheadAttention(8, 2, **kwargs)
        back = QuantMultiheadAttention.from_float(float_mha).to_float()
        assert type(back) is nn.MultiheadAttention and type(back.out_proj) is not QuantLinear
        q, k, v, *_ = _inputs(kwargs, cross=True)
        torch.testing.assert_close(back(q, k, v)[0], float_mha(q, k, v)[0], rtol=0, atol=0)


def test_gradients_flow_in_train_mode():
    torch.manual_seed(5)
    mha = QuantMultiheadAttention(8, 2, batch_first=True, quantize_io=True).train()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        mha(x, x, x)
    for q in all_quantizers(mha):
        q.start_quantizing()
    x.requires_grad_(True)
    out, _ = mha(x, x, x)
    out.square().sum().backward()
    for grad in (mha.in_proj_weight.grad, mha.in_proj_bias.grad, mha.out_proj.weight.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_state_dict_round_trip():
    torch.manual_seed(6)
    a = QuantMultiheadAttention(8, 2, quantize_io=True).eval()
    x = torch.randn(4, 2, 8)
    with torch.no_grad():
        a(x, x, x)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = QuantMultiheadAttention(8, 2, quantize_io=True).eval()
    with torch.no_grad():
        b(x * 0.5, x * 0.5, x * 0.5)  # shapes the per-channel weight qparams
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    a.freeze(), b.freeze()
    torch.testing.assert_close(b(x, x, x)[0], a(x, x, x)[0], rtol=0, atol=0)
